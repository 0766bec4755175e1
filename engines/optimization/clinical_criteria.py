"""Head-and-neck plan criteria, scored the same way on any dose: ours, the clinical plan, a prediction.

The OpenKBP DVH criteria (Babier et al., Med. Phys. 48 (2021) 5549): D99, D95 and D1 of each PTV,
D0.1cc of the brainstem, spinal cord and mandible, and the mean dose of the parotids, esophagus
and larynx. As pass/fail criteria each gets the limit of the standard order
(``orders/head-and-neck-sib.yaml``, RTOG 0920/1016-style) or, for the targets, the usual
acceptance (D95 >= 95 % and D99 >= 90 % of the level's dose; D1 of the highest level <= 110 %).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from .dvh import dose_at_volume

PTV_DOSES_GY = {"PTV70": 70.0, "PTV63": 63.0, "PTV56": 56.0}
NEAR_MAX_CC = 0.1
#: (structure, quantity, limit Gy, at most?) for the organs at risk; TG-263 names.
OAR_CRITERIA = (
    ("Brainstem", "D0.1cc", 54.0, True),
    ("SpinalCord", "D0.1cc", 45.0, True),
    ("Bone_Mandible", "D0.1cc", 73.5, True),
    ("Parotid_L", "mean", 26.0, True),
    ("Parotid_R", "mean", 26.0, True),
    ("Esophagus", "mean", 45.0, True),
    ("Larynx", "mean", 45.0, True),
)


@dataclass(frozen=True)
class Criterion:
    """One criterion on one dose: its value, its limit and whether it is met."""

    name: str
    value_gy: float
    limit_gy: float
    at_most: bool

    @property
    def met(self) -> bool:
        return self.value_gy <= self.limit_gy if self.at_most else self.value_gy >= self.limit_gy


def _near_max(doses: np.ndarray, voxel_cc: float) -> float:
    """D0.1cc: the lowest dose of the hottest 0.1 cm3 (the hottest voxel when smaller)."""
    n = max(1, int(round(NEAR_MAX_CC / voxel_cc)))
    return float(np.sort(doses)[-min(n, doses.size)])


def head_and_neck_criteria(dose_gy: np.ndarray, masks: Mapping[str, np.ndarray], voxel_cc: float) -> list[Criterion]:
    """Every criterion whose structure is in ``masks`` (absent structures are not contoured, not met).

    Parameters
    ----------
    dose_gy : np.ndarray
        Dose on the masks' grid, Gy.
    masks : Mapping[str, np.ndarray]
        Boolean masks by TG-263 name (``PTV70``, ``SpinalCord``, ``Parotid_L`` ...).
    voxel_cc : float
        Volume of one voxel, cm3.

    Returns
    -------
    list of Criterion
    """
    dose = np.asarray(dose_gy, dtype=np.float64)
    out = []
    for ptv, rx in PTV_DOSES_GY.items():
        if ptv not in masks or not np.any(masks[ptv]):
            continue
        doses = dose[np.asarray(masks[ptv], dtype=bool)]
        out.append(Criterion(f"{ptv} D99", dose_at_volume(doses, 99.0), 0.90 * rx, False))
        out.append(Criterion(f"{ptv} D95", dose_at_volume(doses, 95.0), 0.95 * rx, False))
        if ptv == "PTV70":
            out.append(Criterion(f"{ptv} D1", dose_at_volume(doses, 1.0), 1.10 * rx, True))
    for name, quantity, limit, at_most in OAR_CRITERIA:
        if name not in masks or not np.any(masks[name]):
            continue
        doses = dose[np.asarray(masks[name], dtype=bool)]
        value = float(doses.mean()) if quantity == "mean" else _near_max(doses, voxel_cc)
        out.append(Criterion(f"{name} {quantity}", value, limit, at_most))
    return out
