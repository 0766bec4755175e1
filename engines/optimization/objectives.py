"""The medical order turned into penalty terms on dose, and the bixel smoothness operator.

Every term is a squared violation, in units of the prescription, averaged over the voxels of its
structure and multiplied by the weight of its priority; the objective is their sum::

    f(d) = sum_t  w_t / n_t * sum_{i in t} (violation_i / Rx)^2

- ``uniform`` (from each prescription level): ``d_i - Rx_level`` on every voxel of the level's target
  that no higher level's target holds;
- ``min_dose`` / ``max_dose``: dose under / over the level;
- ``min_mean_dose`` / ``max_mean_dose``: the mean under / over the level (one value, n_t = 1);
- ``min_dvh`` / ``max_dvh`` (Wu & Mohan, Med. Phys. 27 (2000) 701): only the voxels that stand
  between the current DVH and the goal, i.e. for ``D(v) <= D`` the voxels with
  ``D < d_i <= D(v)_current``, and for ``D(v) >= D`` those with ``D(v)_current <= d_i < D``.

The dose-space objective and its gradient are written once, with operations numpy and torch
share, and both solvers (scipy L-BFGS-B on numpy, the torch solver on CPU or CUDA) evaluate them
through :func:`dose_objective`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import scipy.sparse as sp

from .dvh import rank_from_hottest
from .order import Constraint, MedicalOrder

#: Penalty weight of each priority class (1 highest .. 5 lowest).
PRIORITY_WEIGHTS = {1: 100.0, 2: 20.0, 3: 5.0, 4: 1.0, 5: 0.2}


@dataclass(frozen=True)
class PenaltyTerm:
    """One penalty on the dose of one structure.

    Attributes
    ----------
    label : str
        What it stands for, e.g. ``Core D10% <= 10 Gy``.
    kind : str
        ``uniform``, ``min_dose``, ``max_dose``, ``min_mean_dose``, ``max_mean_dose``,
        ``min_dvh`` or ``max_dvh``.
    voxels : np.ndarray
        Indices (int64) of the structure's voxels in the dose vector being optimized.
    dose_gy : float
        Dose level of the goal.
    volume_fraction : float
        Fraction of the structure for DVH terms (0.1 for D10%); 0 otherwise.
    weight : float
        Penalty weight, from the priority.
    """

    label: str
    kind: str
    voxels: np.ndarray
    dose_gy: float
    volume_fraction: float
    weight: float


def build_penalty_terms(order: MedicalOrder, voxels: Mapping[str, np.ndarray]) -> list[PenaltyTerm]:
    """The penalty terms of an order.

    Parameters
    ----------
    order : MedicalOrder
    voxels : Mapping[str, np.ndarray]
        For every structure of the order, the int64 indices of its voxels in the dose vector.

    Returns
    -------
    list of PenaltyTerm
        One uniformity term per prescription level first, then one term per constraint. A lower
        level's term leaves out the voxels of the higher levels' targets (the higher level
        governs where targets overlap). A soft upper bound on an organ leaves out the voxels of
        every target prescribed more than its limit (the target governs; see :func:`_spared_voxels`).
    """
    terms = []
    higher = np.zeros(0, dtype=np.int64)
    for level in order.levels:
        own = np.setdiff1d(np.asarray(voxels[level.target], dtype=np.int64), higher, assume_unique=False)
        higher = np.union1d(higher, voxels[level.target])
        if own.size == 0:
            continue  # wholly inside a higher level's target
        terms.append(PenaltyTerm(
            f"{level.target} uniform {level.dose_gy:g} Gy", "uniform", own, level.dose_gy, 0.0,
            PRIORITY_WEIGHTS[level.priority],
        ))
    for c in order.constraints:
        fraction = (c.volume_pct or 0.0) / 100.0
        terms.append(PenaltyTerm(c.describe(), c.type, _spared_voxels(order, c, voxels), c.dose_gy, fraction,
                                 PRIORITY_WEIGHTS[c.priority]))
    return terms


def _spared_voxels(order: MedicalOrder, constraint: Constraint, voxels: Mapping[str, np.ndarray]) -> np.ndarray:
    """The voxels a constraint's penalty acts on: a soft upper bound spares only the organ outside the targets.

    Where a parotid (mean <= 26 Gy) overlaps a 56 Gy target, both cannot hold: a penalty on the
    overlap traded the target's coverage for the organ's mean, and since each term is averaged over
    its own voxels, a small organ's voxels outweighed a large target's (OpenKBP pt_206, left parotid
    73 % inside the targets: PTV56 D99 23 Gy, the clinical plan's 55 Gy). The clinical practice is an
    "organ minus PTV" optimization structure: the penalty leaves out the voxels of every target
    prescribed more than its limit, and the goal is still judged on the whole organ (a missed mean
    moves the objective on the rest down, :mod:`.goal_driven`). Hard goals (the cord's, the
    brainstem's maxima), lower bounds and the targets' own goals keep every voxel; an organ wholly
    inside such targets keeps its voxels too.
    """
    own = np.asarray(voxels[constraint.structure], dtype=np.int64)
    if constraint.hard or constraint.is_lower_bound or constraint.structure in order.targets:
        return own
    hotter = [voxels[level.target] for level in order.levels if level.dose_gy > constraint.dose_gy]
    if not hotter:
        return own
    outside = np.setdiff1d(own, np.concatenate(hotter))
    return outside if outside.size else own


@dataclass(frozen=True)
class DeviceTerms:
    """Penalty terms with their voxel indices as arrays of one backend (numpy, or torch on a device)."""

    terms: tuple[PenaltyTerm, ...]
    indices: tuple
    rx_gy: float
    xp: ModuleType


def to_device(terms: Sequence[PenaltyTerm], rx_gy: float, device: str | None) -> DeviceTerms:
    """Prepare ``terms`` once, before the iterations: numpy for ``device=None``, else torch on it."""
    if device is None:
        indices = tuple(np.asarray(t.voxels, dtype=np.int64) for t in terms)
        return DeviceTerms(tuple(terms), indices, float(rx_gy), np)
    import torch  # only the torch solver needs it; the CPU path stays light

    indices = tuple(torch.as_tensor(t.voxels, dtype=torch.int64, device=device) for t in terms)
    return DeviceTerms(tuple(terms), indices, float(rx_gy), torch)


def _current_dvh_dose(d, volume_fraction: float, xp: ModuleType) -> float:
    """D(v) of the current dose: the lowest dose among the hottest ``volume_fraction`` of voxels."""
    n = int(d.shape[0])
    position = n - rank_from_hottest(100.0 * volume_fraction, n)  # 0-based, ascending order
    if xp is np:
        return float(np.partition(d, position)[position])
    return float(xp.kthvalue(d, position + 1).values)


def dose_objective(dose, device_terms: DeviceTerms):
    """Objective value and its gradient with respect to the dose.

    One implementation for both solvers: ``dose`` is a numpy array (scipy L-BFGS-B) or a torch
    tensor (torch solver, any device), matching ``device_terms``. DVH terms hold the current
    ``D(v)`` fixed within an evaluation (Wu & Mohan).

    Parameters
    ----------
    dose : np.ndarray or torch.Tensor
        Dose in Gy of every voxel being optimized (1-D).
    device_terms : DeviceTerms
        From :func:`to_device`, on ``dose``'s backend and device.

    Returns
    -------
    value : float
        Objective (dimensionless; 0 when every goal is met and the target is uniform).
    gradient : same type as ``dose``
        d value / d dose (1 / Gy).
    """
    xp = device_terms.xp
    rx = device_terms.rx_gy
    value = 0.0
    gradient = xp.zeros_like(dose)
    for term, index in zip(device_terms.terms, device_terms.indices):
        d = dose[index] / rx
        level = term.dose_gy / rx
        n = int(d.shape[0])
        if term.kind in ("min_mean_dose", "max_mean_dose"):
            excess = float(d.mean()) - level
            excess = max(excess, 0.0) if term.kind == "max_mean_dose" else min(excess, 0.0)
            value += term.weight * excess**2
            gradient[index] += term.weight * 2.0 * excess / (n * rx)
            continue
        if term.kind == "uniform":
            violation = d - level
        elif term.kind == "min_dose":
            violation = xp.clip(d - level, None, 0.0)
        elif term.kind == "max_dose":
            violation = xp.clip(d - level, 0.0, None)
        elif term.kind in ("min_dvh", "max_dvh"):
            current = _current_dvh_dose(d, term.volume_fraction, xp)
            if term.kind == "max_dvh":
                active = (d > level) & (d <= current)
            else:
                active = (d < level) & (d >= current)
            violation = xp.where(active, d - level, xp.zeros_like(d))
        else:
            raise ValueError(f"unknown penalty kind {term.kind!r} in term {term.label!r}")
        value += term.weight * float((violation * violation).sum()) / n
        if term.kind == "uniform":
            gradient[index] += (2.0 * term.weight / (n * rx)) * violation
        else:  # one-sided: zero but where the dose crosses the level (adding zeros changes nothing)
            hit = xp.where(violation != 0)[0]
            gradient[index[hit]] += (2.0 * term.weight / (n * rx)) * violation[hit]
    return value, gradient


def smoothness_operator(bixel_grids: Sequence[tuple[int, int] | np.ndarray], n_bixels: int) -> sp.csr_matrix:
    """Finite differences between neighbouring bixels of each beam.

    Parameters
    ----------
    bixel_grids : sequence
        One entry per beam, in the order of the dose influence matrix's columns. Either a shape
        ``(n_rows, n_cols)`` (the beam's bixels are its whole grid, in C order) or an int array
        ``(n, 2)`` of the ``(row, col)`` grid position of each of the beam's ``n`` bixels.
    n_bixels : int
        Number of columns of the dose influence matrix; the beams must account for all of them.

    Returns
    -------
    scipy.sparse.csr_matrix
        ``(n_pairs, n_bixels)``, one row ``e_a - e_b`` per pair of bixels that share an edge
        within a beam; ``||L x||^2`` is the roughness of fluence ``x``.

    Raises
    ------
    ValueError
        When the grids do not add up to ``n_bixels`` or hold repeated positions.
    """
    rows_a: list[np.ndarray] = []
    rows_b: list[np.ndarray] = []
    offset = 0
    for beam_index, grid in enumerate(bixel_grids):
        if isinstance(grid, tuple) or (np.ndim(grid) == 1 and np.size(grid) == 2):
            n_rows, n_cols = (int(v) for v in grid)
            positions = np.stack(np.unravel_index(np.arange(n_rows * n_cols), (n_rows, n_cols)), axis=1)
        else:
            positions = np.asarray(grid, dtype=np.int64)
            if positions.ndim != 2 or positions.shape[1] != 2:
                raise ValueError(f"bixel grid of beam {beam_index} must be (rows, cols) or an (n, 2) array, got shape {positions.shape}")
        positions = positions - positions.min(axis=0)
        shape = tuple(positions.max(axis=0) + 1)
        lookup = np.full(shape, -1, dtype=np.int64)
        lookup[positions[:, 0], positions[:, 1]] = np.arange(len(positions))
        if np.count_nonzero(lookup >= 0) != len(positions):
            raise ValueError(f"bixel grid of beam {beam_index} holds repeated (row, col) positions")
        for neighbour_a, neighbour_b in ((lookup[:, :-1], lookup[:, 1:]), (lookup[:-1, :], lookup[1:, :])):
            both = (neighbour_a >= 0) & (neighbour_b >= 0)
            rows_a.append(neighbour_a[both] + offset)
            rows_b.append(neighbour_b[both] + offset)
        offset += len(positions)
    if offset != n_bixels:
        raise ValueError(f"the bixel grids hold {offset} bixels but the dose influence matrix has {n_bixels} columns")
    a = np.concatenate(rows_a) if rows_a else np.zeros(0, dtype=np.int64)
    b = np.concatenate(rows_b) if rows_b else np.zeros(0, dtype=np.int64)
    pair = np.arange(len(a))
    data = np.concatenate([np.ones(len(a)), -np.ones(len(b))])
    return sp.csr_matrix((data, (np.concatenate([pair, pair]), np.concatenate([a, b]))), shape=(len(a), n_bixels))
