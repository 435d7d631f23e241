"""3D initial reference (VDAM, ``relion_refine --grad --denovo_3dref``) and symmetry alignment
(``relion_align_symmetry``: :mod:`.align_symmetry`, with the map moves in :mod:`.map_geometry` and the
search's orientations and score in :mod:`.symmetry_search`). Their jobs (form values, job
directories, the ``subtomo`` commands) are :mod:`subtomo_nb.jobs.initial_model` and
:mod:`subtomo_nb.jobs.align_symmetry`."""
