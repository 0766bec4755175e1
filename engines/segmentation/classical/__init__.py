"""Classical auto-contouring (BODY, lungs, bones, air cavities), sharded by z-slabs.

Use ``contour_volume(ct)`` in one piece, or split the work::

    slabs = plan_slabs(nz, n_parts)
    results = [contour_slab(ct.voxels[s.halo_start:s.halo_stop], ct.spacing_mm, ct.direction, s) for s in slabs]
    masks = merge_slabs(results, ct)  # bit-identical to contour_volume(ct)

Structure definitions: :mod:`rtgrid.engines.segmentation.classical.definitions`.
"""

from rtgrid.engines.segmentation.classical.definitions import HALO_SLICES, STRUCTURE_NAMES
from rtgrid.engines.segmentation.classical.merge import contour_volume, merge_slabs
from rtgrid.engines.segmentation.classical.slab_contouring import contour_slab
from rtgrid.engines.segmentation.classical.slabs import Slab, SlabPlanError, SlabResult, plan_slabs

__all__ = [
    "HALO_SLICES",
    "STRUCTURE_NAMES",
    "Slab",
    "SlabPlanError",
    "SlabResult",
    "contour_slab",
    "contour_volume",
    "merge_slabs",
    "plan_slabs",
]
