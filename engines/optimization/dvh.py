"""Cumulative dose-volume histograms, plan metrics and the goal check of a medical order.

Conventions (the same everywhere in rtgrid):

- ``D(v%)`` is the highest dose received by at least ``v`` % of the structure: with the voxel
  doses sorted from hottest, the dose of voxel number ``ceil(v / 100 * n)``. ``D(100%)`` is the
  minimum and ``D(0+)`` the maximum.
- ``V(d)`` is the volume receiving at least ``d`` Gy.
- A cumulative DVH at dose ``d`` gives ``V(d)``; its dose axis starts at 0 Gy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from rtgrid.engines.errors import EngineError

from .order import MedicalOrder

#: Dose levels reported by :func:`plan_metrics` as D(v%).
METRIC_VOLUMES_PCT = (2.0, 50.0, 95.0, 98.0)


class DvhError(EngineError, ValueError):
    """A structure and a dose grid that do not fit together (shape, empty structure, missing name)."""


@dataclass(frozen=True)
class Dvh:
    """A cumulative DVH.

    Attributes
    ----------
    dose_gy : np.ndarray
        Dose axis in Gy: ``0, bin_gy, 2 bin_gy, ...`` up to just above the maximum dose.
    volume_cc : np.ndarray
        Volume (cm3) receiving at least ``dose_gy[i]``.
    total_volume_cc : float
        Volume of the structure (cm3).
    """

    dose_gy: np.ndarray
    volume_cc: np.ndarray
    total_volume_cc: float

    @property
    def volume_pct(self) -> np.ndarray:
        """Relative cumulative volume in % of the structure."""
        return 100.0 * self.volume_cc / self.total_volume_cc


@dataclass(frozen=True)
class GoalResult:
    """Whether the plan meets one goal of the order.

    Attributes
    ----------
    goal : str
        The goal as written, e.g. ``Core D10% <= 10 Gy``.
    structure : str
    achieved_gy : float
        The plan's value of the constrained quantity (Dmin, Dmax, Dmean or D(v%)) in Gy.
    limit_gy : float
    met : bool
    """

    goal: str
    structure: str
    achieved_gy: float
    limit_gy: float
    met: bool


def structure_doses(dose_gy: np.ndarray, mask: np.ndarray, name: str = "structure") -> np.ndarray:
    """Doses of a structure's voxels.

    Parameters
    ----------
    dose_gy : np.ndarray
        Dose grid (any shape) or the flat dose vector.
    mask : np.ndarray
        Boolean mask of the dose grid's shape (or flat size), or int indices into the flat grid.
    name : str
        Structure name, for messages.

    Returns
    -------
    np.ndarray
        1-D float64 doses of the structure's voxels.

    Raises
    ------
    DvhError
        Mask shape that does not fit the dose, or an empty structure.
    """
    flat = np.asarray(dose_gy).reshape(-1)
    mask = np.asarray(mask)
    if mask.dtype == bool:
        if mask.size != flat.size:
            raise DvhError(f"mask of {name} has shape {mask.shape}, the dose grid {np.shape(dose_gy)}")
        values = flat[mask.reshape(-1)]
    else:
        if mask.size and (mask.min() < 0 or mask.max() >= flat.size):
            raise DvhError(f"voxel indices of {name} fall outside the dose grid of {flat.size} voxels")
        values = flat[mask.reshape(-1)]
    if values.size == 0:
        raise DvhError(f"structure {name} holds no voxel of the dose grid")
    return values.astype(np.float64)


def rank_from_hottest(volume_pct: float, n_voxels: int) -> int:
    """Rank (1 = hottest) of the voxel whose dose is ``D(volume_pct)`` among ``n_voxels``."""
    # The small allowance keeps 95 % of 20 voxels at rank 19, not 20, despite float rounding.
    return min(max(math.ceil(volume_pct / 100.0 * n_voxels - 1e-9), 1), n_voxels)


def dose_at_volume(doses_gy: np.ndarray, volume_pct: float) -> float:
    """``D(v%)``: the highest dose received by at least ``volume_pct`` % of the voxels.

    Parameters
    ----------
    doses_gy : np.ndarray
        Doses of a structure's voxels (1-D, not empty).
    volume_pct : float
        In (0, 100].

    Returns
    -------
    float
    """
    n = doses_gy.size
    rank_from_top = rank_from_hottest(volume_pct, n)
    return float(np.partition(doses_gy, n - rank_from_top)[n - rank_from_top])


def cumulative_dvh(dose_gy: np.ndarray, mask: np.ndarray, voxel_volume_cc: float, bin_gy: float = 0.01) -> Dvh:
    """Cumulative DVH of one structure.

    Parameters
    ----------
    dose_gy : np.ndarray
        Dose grid in Gy.
    mask : np.ndarray
        Boolean mask on the dose grid, or flat voxel indices.
    voxel_volume_cc : float
        Volume of one dose voxel in cm3.
    bin_gy : float
        Spacing of the dose axis.

    Returns
    -------
    Dvh
    """
    doses = structure_doses(dose_gy, mask)
    n_bins = int(np.floor(doses.max() / bin_gy)) + 2
    edges = np.arange(n_bins) * bin_gy
    # Voxels with dose >= edges[b]: count the voxels per bin, then accumulate from the top.
    counts = np.bincount(np.clip(np.floor(doses / bin_gy).astype(np.int64), 0, None), minlength=n_bins)[:n_bins]
    at_least = np.cumsum(counts[::-1])[::-1]
    return Dvh(edges, at_least * voxel_volume_cc, doses.size * voxel_volume_cc)


def plan_metrics(dose_gy: np.ndarray, masks: dict[str, np.ndarray], voxel_volume_cc: float,
                 dose_levels_gy: tuple[float, ...] = ()) -> dict[str, dict[str, float]]:
    """Dose statistics of every structure.

    Parameters
    ----------
    dose_gy : np.ndarray
        Dose grid in Gy.
    masks : dict[str, np.ndarray]
        Structure name to boolean mask on the dose grid (or flat voxel indices).
    voxel_volume_cc : float
        Volume of one dose voxel in cm3.
    dose_levels_gy : tuple of float
        Dose levels ``x`` for which ``Vx`` is reported (in % and cc).

    Returns
    -------
    dict
        ``{name: {"volume_cc", "Dmean", "Dmax", "Dmin", "D2", "D10", "D50", "D95", "D98",
        "V<x>Gy_pct", "V<x>Gy_cc"}}``, doses in Gy.
    """
    metrics: dict[str, dict[str, float]] = {}
    for name, mask in masks.items():
        doses = structure_doses(dose_gy, mask, name)
        row = {
            "volume_cc": doses.size * voxel_volume_cc,
            "Dmean": float(doses.mean()),
            "Dmax": float(doses.max()),
            "Dmin": float(doses.min()),
        }
        for v in sorted(set(METRIC_VOLUMES_PCT) | {10.0}):
            row[f"D{v:g}"] = dose_at_volume(doses, v)
        for level in dose_levels_gy:
            inside = int(np.count_nonzero(doses >= level))
            row[f"V{level:g}Gy_pct"] = 100.0 * inside / doses.size
            row[f"V{level:g}Gy_cc"] = inside * voxel_volume_cc
        metrics[name] = row
    return metrics


def targets_mask(order: MedicalOrder, masks: Mapping[str, np.ndarray]) -> np.ndarray:
    """The union of the order's prescription targets (boolean, the masks' shape): what beams cover."""
    return np.logical_or.reduce([np.asarray(masks[target], dtype=bool) for target in order.targets])


def evaluate_goals(order: MedicalOrder, dose_gy: np.ndarray, masks: dict[str, np.ndarray],
                   voxel_volume_cc: float, tolerance_gy: float = 1e-6) -> list[GoalResult]:
    """Check every goal of the order, the coverage of each prescription level first.

    Parameters
    ----------
    order : MedicalOrder
    dose_gy : np.ndarray
        Dose grid in Gy.
    masks : dict[str, np.ndarray]
        Every structure of the order as a boolean mask on the dose grid (or flat voxel indices).
    voxel_volume_cc : float
        Volume of one dose voxel in cm3 (kept for symmetry with :func:`plan_metrics`; goals are
        relative to the structure's volume).
    tolerance_gy : float
        Rounding allowance when comparing an achieved dose with its limit.

    Returns
    -------
    list of GoalResult

    Raises
    ------
    DvhError
        A structure of the order that is not in ``masks``.
    """
    missing = [name for name in order.structures if name not in masks]
    if missing:
        raise DvhError(f"no mask for {missing} named by the order from {order.source}; masks given: {sorted(masks)}")
    results = []
    for level in order.levels:
        target = structure_doses(dose_gy, masks[level.target], level.target)
        coverage = dose_at_volume(target, level.normalization_volume_pct)
        results.append(GoalResult(
            f"{level.target} D{level.normalization_volume_pct:g}% >= {level.dose_gy:g} Gy (prescription)",
            level.target, coverage, level.dose_gy, coverage >= level.dose_gy - tolerance_gy,
        ))
    for c in order.constraints:
        doses = structure_doses(dose_gy, masks[c.structure], c.structure)
        achieved = {
            "min_dose": lambda: float(doses.min()),
            "max_dose": lambda: float(doses.max()),
            "min_mean_dose": lambda: float(doses.mean()),
            "max_mean_dose": lambda: float(doses.mean()),
            "min_dvh": lambda: dose_at_volume(doses, c.volume_pct),
            "max_dvh": lambda: dose_at_volume(doses, c.volume_pct),
        }[c.type]()
        met = achieved >= c.dose_gy - tolerance_gy if c.is_lower_bound else achieved <= c.dose_gy + tolerance_gy
        results.append(GoalResult(c.describe(), c.structure, achieved, c.dose_gy, bool(met)))
    return results
