"""subtomo_nb: notebook-native subtomogram averaging compatible with RELION 5.

Layers (the core knows nothing of the layers above it):

* ``subtomo_nb.io`` -- RELION STAR/MRC files, optimisation sets, particle and tomogram sets.
* ``subtomo_nb.geometry`` -- Euler angles, point groups, HEALPix sampling, translations.
* ``subtomo_nb.fourier`` -- projector, back-projector, reconstruction, FSC, masks, CTF.
* ``subtomo_nb.simulate`` -- the seeded synthetic tutorial dataset.
* ``subtomo_nb.tasks`` -- extract, reconstruct particle, re-centre (the jobs' numerical bodies).
* ``subtomo_nb.cli`` -- the ``subtomo`` command line.

Array conventions used throughout: volumes are indexed ``[z, y, x]`` (as MRC files and numpy);
coordinate vectors are ``(x, y, z)``; the centre of a box of size N is voxel ``N // 2``.
"""

__version__ = "0.1.0"
