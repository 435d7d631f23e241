"""``--fast``: an accelerated VDAM search for an initial model in minutes (subtomo_nb's own, not RELION's).

RELION's 3D initial reference (:mod:`.vdam`) searches every orientation at the current image
size, which on a Nyquist-limited dataset is the whole box from the first mini-batches, and ends
with an exhaustive HEALPix order 3 search (7.5°, 3.75° oversampled) over mini-batches that grow to
``max(min(0.1 N, 50000), 1000)`` particles (every particle when there are at most 1000). An initial model only needs about 30 Å: auto-refine takes it from there,
low-passed (``--ini_high``, 40–60 Å). ``--fast`` keeps VDAM's algorithm (the same gradients,
moments, step size and T schedules, noise model and outputs) and changes what each mini-batch
searches and how many particles it holds, by these stated rules:

1. **Frequency marching.** The image size follows the model's resolution more closely:
   ``2 (maxres + FAST_INCR_SIZE)`` shells instead of RELION's ``2 (maxres + 10)``, where
   ``maxres`` is the current-resolution shell of RELION's own SSNR estimate; and the search never
   goes beyond the shell of :data:`FAST_MAX_RESOLUTION_A` (the resolution an initial model is
   asked for, with a margin). As in RELION, the map is updated only inside the image size, so
   the resolution can still grow by ``FAST_INCR_SIZE`` shells per mini-batch.
2. **Angular sampling.** Auto-sampling stops at HEALPix order :data:`FAST_MAX_HEALPIX_ORDER`
   (15° coarse, 7.5° after oversampling) instead of RELION's order 3 (7.5°, 3.75°), which costs
   eight times as many orientations. A 7.5° error moves a point 75 Å from the centre by 9.8 Å,
   a third of a 30 Å resolution element, and the posterior-weighted back-projection averages
   over the neighbouring samples; auto-refine goes finer from there.
3. **Mini-batch sizes.** The mini-batches keep their initial size (``--grad_ini_subset``, 200 by
   RELION's rule for fewer than 40,000 particles) to the end, instead of growing to
   ``--grad_fin_subset`` (RELION's rule above): the larger final mini-batches only lower the
   gradient's noise at resolutions beyond an initial model's. (The issue that asked for
   ``--fast`` suggested fewer but larger mini-batches; measured on the tutorial project, keeping
   the 100 mini-batches at their initial size is what pays: ``benchmarks/RESULTS.md``.) As the mini-batches stay a subset,
   the noise spectrum, offset width and class shares keep their momentum ``mu`` (0.9) to the end
   (RELION sets it to 0 once a mini-batch holds every particle).

Everything else (iteration count, schedules, the tilt prior, the significant-sample cap, the
outputs and ``initial_model.mrc``'s symmetry alignment) is RELION's. :meth:`FastSearch.describe`
gives the lines ``run.out`` and the job form show.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "FAST_INCR_SIZE",
    "FAST_MAX_HEALPIX_ORDER",
    "FAST_MAX_RESOLUTION_A",
    "FastSearch",
]

#: Shells added to the current-resolution shell for the image size (RELION's incr_size is 10).
FAST_INCR_SIZE = 2
#: The search goes no further than this resolution (Å); an initial model is asked for ~30 Å.
FAST_MAX_RESOLUTION_A = 25.0
#: Auto-sampling stops at this HEALPix order (15° coarse, 7.5° oversampled).
FAST_MAX_HEALPIX_ORDER = 2


@dataclass(frozen=True)
class FastSearch:
    """The rules of ``--fast`` (module docstring), with the numbers of one job.

    Attributes
    ----------
    incr_size : int -- shells added to the current-resolution shell for the image size.
    max_resolution_A : float -- highest resolution searched (Å).
    max_healpix_order : int -- last HEALPix order of auto-sampling.
    subset : int or None -- mini-batch size of every iteration (particles); None: RELION's schedule.

    ``max_resolution_A <= 0`` sets no resolution cap. The benchmark switches single rules off
    with these values to measure each one's share (``benchmarks/initial_model.py --fast_without``).
    """

    incr_size: int = FAST_INCR_SIZE
    max_resolution_A: float = FAST_MAX_RESOLUTION_A
    max_healpix_order: int = FAST_MAX_HEALPIX_ORDER
    subset: int | None = 200

    def image_size(self, maxres_shell: int, box: int, pixel_size_A: float) -> int:
        """Current image size (pixels: even, or the box) for a current-resolution shell ``maxres_shell``.

        ``2 (maxres + incr_size)``, at most :meth:`cap_size` (the size whose Nyquist shell is the
        shell of ``max_resolution_A``), at most ``box``.
        """
        return int(min(2 * (maxres_shell + self.incr_size), self.cap_size(box, pixel_size_A)))

    def cap_size(self, box: int, pixel_size_A: float) -> int:
        """Largest image size (pixels) the search uses: ``2 · ROUND(box · pixel / max_resolution_A)``, at most ``box``.

        Its Nyquist, ``box · pixel / ROUND(...)``, is the shell's resolution, which may be a little
        finer than ``max_resolution_A`` (24.7 Å for 25 Å on the tutorial's 10.8 Å pixel, box 32).
        """
        if self.max_resolution_A <= 0:
            return int(box)
        return int(min(2 * math.floor(box * pixel_size_A / self.max_resolution_A + 0.5), box))

    def describe(self, *, relion_subset: tuple[int, int], relion_max_order: int, box: int,
                 pixel_size_A: float) -> list[str]:
        """What ``--fast`` changes in a job of this box (pixels) and pixel size (Å), one line each."""
        from subtomo_nb.geometry.healpix import angular_step   # numpy: not at import (the job registry reads this module)

        ini, fin = relion_subset
        lines = ["--fast: an accelerated search that is not RELION's (subtomo_nb's own; without --fast the job is RELION's)"]
        if self.incr_size < 10 or self.max_resolution_A > 0:
            cap_size = self.cap_size(box, pixel_size_A)
            cap = (f", searching no further than {box * pixel_size_A / (cap_size // 2):.1f} Å (shell {cap_size // 2}, "
                   f"for {self.max_resolution_A:g} Å)" if cap_size < box else "")
            lines.append(f"--fast: image size 2 x (current-resolution shell + {self.incr_size}) instead of + 10{cap} "
                         "(frequency marching)")
        if self.max_healpix_order < relion_max_order:
            lines.append(f"--fast: HEALPix order at most {self.max_healpix_order} ({angular_step(self.max_healpix_order):g}°, "
                         f"{angular_step(self.max_healpix_order, 1):g}° oversampled; RELION's auto-sampling would go "
                         f"to order {relion_max_order})")
        if self.subset is not None and fin > ini:
            lines.append(f"--fast: every mini-batch holds {self.subset} particles (RELION's grow from {ini} to {fin})")
        return lines
