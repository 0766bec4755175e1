"""What each classical structure means, and the numbers that define it.

Structures (bool masks on the CT grid):

``BODY`` (RT ROI type EXTERNAL)
    The patient outline. Voxels above ``BODY_HU`` after a per-slice opening by a square of
    half-width ``BODY_OPENING_MM`` (which cuts the thin couch shell, mattress, blankets and cables off the
    skin), with every enclosed hole filled per slice (so lungs, trachea and bowel gas are inside),
    then 3-D connected components (6-connectivity). A component is patient when at least
    ``BODY_MIN_TISSUE_FRACTION`` of its voxels lie in ``SOFT_TISSUE_HU`` (fat, muscle, organs;
    a couch is shell and foam core, a mattress foam). The largest patient component is kept, and
    so is every other one of at least ``BODY_KEEP_FRACTION`` of its volume (arms lying apart).
``Lung_L`` / ``Lung_R`` (ORGAN)
    Internal air: BODY voxels below ``AIR_HU``, denoised by a 3-D opening (one voxel), with holes
    filled per slice so vessels inside the lung belong to it. Per-slice air components no larger
    than ``AIRWAY_MAX_AREA_MM2`` whose centre lies within ``AIRWAY_MAX_MIDLINE_OFFSET_MM`` of the
    slice's body centre are airway-like (trachea, main bronchi, oesophagus) and never lung. The
    remaining air forms 3-D components; a component is lung when it holds at least
    ``LUNG_MIN_ML`` and its median HU is at least ``LUNG_MIN_MEDIAN_HU`` (parenchyma; the bulk of
    a gas pocket sits near -1000 HU). Patient left is +x in LPS: of two lungs, the one whose
    centroid has the larger LPS x is ``Lung_L``. Lungs joined in one component are split where
    erosion first separates them into two parts.
``Bones`` (ORGAN)
    BODY voxels at or above ``BONE_HU`` (cortical and dense trabecular bone; contrast-filled
    vessels mostly stay below), closed by a 3 x 3 square and hole-filled per slice (marrow), without 3-D
    components smaller than ``BONE_MIN_ML`` (calcifications, contrast specks).
``AirCavity`` (CAVITY)
    Internal air that is not lung: trachea, bronchi outside the lungs, bowel gas, sinuses.
"""

from __future__ import annotations

STRUCTURE_NAMES: tuple[str, ...] = ("BODY", "Lung_L", "Lung_R", "Bones", "AirCavity")

BODY_HU = -350
"""Skin and fat are far above; the foam mattress and outside air far below."""
BODY_OPENING_MM = 4.0
"""Half-width of the square of the per-slice opening that detaches the couch shell, blankets and cables."""
BODY_KEEP_FRACTION = 0.02
"""Other body components (arms) are kept when at least this fraction of the largest one."""
SOFT_TISSUE_HU = (-200, 150)
"""``[low, high)`` HU of fat, muscle, blood and organs."""
BODY_MIN_TISSUE_FRACTION = 0.5
"""Patient components are mostly soft tissue; couch tops and pads are not."""

AIR_HU = -400
"""Lung parenchyma (about -850 HU) and gas are below; soft tissue far above."""
AIRWAY_MAX_AREA_MM2 = 700.0
"""Largest in-plane area of a trachea, main bronchus or oesophagus section (about 30 mm across)."""
AIRWAY_MAX_MIDLINE_OFFSET_MM = 30.0
"""Airways and oesophagus run within this lateral distance of the body's centre."""
LUNG_MIN_ML = 50.0
"""Smallest air component taken for a lung; smaller pockets (partial-volume gas) are AirCavity."""
LUNG_MIN_MEDIAN_HU = -950.0
"""Lowest median HU of a lung: parenchyma is about -850 (emphysema about -930), gas about -1000."""

BONE_HU = 180
"""Cortical and dense trabecular bone are above; iodinated blood (about 150 HU) mostly below."""
BONE_MIN_ML = 0.3
"""Smaller dense specks are calcifications or contrast, not bone."""

HALO_SLICES = 2
"""Slices of context each slab reads beyond its core: the 3-D opening of the air mask (erosion
then dilation, one slice each) reaches two slices."""

BIT_BODY = 1
BIT_AIR = 2
BIT_AIRWAY_LIKE = 4
BIT_BONE = 8
