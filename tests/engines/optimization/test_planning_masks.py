"""The masks the optimizer aims at: a thin first-level target and, with a goal margin, hard-limited organs get a ring."""

from __future__ import annotations

import numpy as np

from rtgrid.engines.optimization.coplanar_plan import THIN_TARGET_RING_VOXELS, planning_masks
from rtgrid.engines.optimization.order import load_order

NAMES = ("PTV70", "PTV56", "Cord", "Gland", "BODY")
ORDER = """
prescriptions: [{target: PTV70, dose_gy: 70}, {target: PTV56, dose_gy: 56}]
fractions: 35
constraints:
  - {structure: Cord, type: max_dose, dose_gy: 45}
  - {structure: Gland, type: max_mean_dose, dose_gy: 26}
  - {structure: BODY, type: max_dose, dose_gy: 80}
"""


def _masks(thin: bool) -> dict[str, np.ndarray]:
    shape = (20, 20, 40)
    masks = {name: np.zeros(shape, dtype=bool) for name in NAMES}
    masks["BODY"][1:-1, 1:-1, 1:-1] = True
    if thin:
        masks["PTV70"][10, 10, 5:15] = True          # a line one voxel wide: no interior voxel
    else:
        masks["PTV70"][6:14, 6:14, 5:15] = True      # a block: mostly interior
    masks["PTV56"][4:16, 4:16, 20:30] = True
    masks["Cord"][10, 10, 16:18] = True              # two voxels beyond the line's end
    masks["Gland"][10, 12, 5:8] = True
    return masks


def test_a_thin_target_is_planned_with_a_ring_outside_hard_limited_organs():
    order = load_order(ORDER, NAMES)
    masks = _masks(thin=True)
    planned = planning_masks(order, masks, masks["BODY"])
    ring = planned["PTV70"] & ~masks["PTV70"]
    assert np.count_nonzero(ring) > 0 and np.all(planned["PTV70"][masks["PTV70"]])
    # as far as the ring's width (26 neighbours), never into the cord (a hard maximum), into a soft organ yes
    assert ring[10, 10 + THIN_TARGET_RING_VOXELS, 10] and not ring[10, 10 + THIN_TARGET_RING_VOXELS + 1, 10]
    assert not ring[masks["Cord"]].any() and ring[masks["Gland"] & ~masks["PTV70"]].all()
    # the lower level, the organs and the outline are what they were
    for name in ("PTV56", "Cord", "Gland", "BODY"):
        assert np.array_equal(planned[name], masks[name]), name
    masks["PTV56"][:] = False
    masks["PTV56"][5, 5, 20:30] = True               # a thin lower level keeps its contour: it has the goal margin
    assert np.array_equal(planning_masks(order, masks, masks["BODY"])["PTV56"], masks["PTV56"])


def test_a_thick_target_is_planned_as_contoured():
    order = load_order(ORDER, NAMES)
    masks = _masks(thin=False)
    planned = planning_masks(order, masks, masks["BODY"])
    assert all(np.array_equal(planned[name], masks[name]) for name in NAMES)


def test_with_a_goal_margin_hard_limited_organs_gain_a_voxel_outside_the_targets():
    order = load_order(ORDER.replace("fractions: 35", "fractions: 35\ngoal_margin_gy: 1.5"), NAMES)
    masks = _masks(thin=False)
    masks["Cord"][:] = False
    masks["Cord"][10, 10, 15:17] = True              # touching the block, which ends at 14
    planned = planning_masks(order, masks, masks["BODY"])
    ring = planned["Cord"] & ~masks["Cord"]
    assert ring[10, 10, 17] and ring[10, 11, 15] and ring[11, 10, 16] and not ring[10, 11, 17]  # six neighbours
    assert not (ring & masks["PTV70"]).any() and masks["PTV70"][10, 10, 14]   # the targets keep their voxels
    assert np.array_equal(planning_masks(load_order(ORDER, NAMES), masks, masks["BODY"])["Cord"], masks["Cord"])
    assert np.array_equal(planned["Gland"], masks["Gland"]) and np.array_equal(planned["BODY"], masks["BODY"])
