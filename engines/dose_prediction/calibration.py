"""Target dose-volume calibration: the hot and cold ends of each target's predicted dose restored.

A network trained on the voxels' absolute error smooths the dose inside a target, and the
dose-volume histogram comes out the wrong shape: on OpenKBP training patients version 4 predicted
the hottest 1 % of each target (D1) 0.9-1.4 Gy too cool, and the coldest 1 % (D99) of the 70 and
63 Gy targets 1.1 Gy too cool as well. A calibration records, per prescription level (highest
first, as the input channels order them), the mean difference between the clinical and the
predicted dose at each quantile of the level's own target voxels, as a fraction of the level's
dose, measured on training patients. Prediction adds it at each voxel's rank within its target,
so the predicted dose-volume histogram of a target takes the clinical plans' shape while the
order of its voxels (where it is hottest) stays the network's. Dose outside the targets is not
touched.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .inputs import N_LEVELS, REFERENCE_DOSE_GY

QUANTILES = 101
"""Points of the calibration curve, evenly spaced from the coldest voxel (0) to the hottest (1)."""
MIN_FIT_VOXELS = 50
"""A target smaller than this (a few voxels) says little about a distribution: not fitted on."""


def target_levels(inputs: np.ndarray) -> list[tuple[int, float, np.ndarray]]:
    """Each prescription level's dose (Gy) and own target voxels, read from the input channels.

    Parameters
    ----------
    inputs : np.ndarray
        ``[C, z, y, x]`` as :func:`~rtgrid.engines.dose_prediction.build_inputs` gives: channel
        ``1 + i`` holds level ``i``'s dose / :data:`REFERENCE_DOSE_GY` where its target is not
        covered by a higher level.

    Returns
    -------
    list of (int, float, np.ndarray)
        ``(rank, dose_gy, bool mask)`` per level with voxels of its own, highest first.
    """
    out = []
    for rank in range(N_LEVELS):
        own = inputs[1 + rank] > 0
        if own.any():
            # float32 channels: 56 Gy / 70 comes back as 56.0000008 Gy.
            out.append((rank, round(float(inputs[1 + rank][own].max()) * REFERENCE_DOSE_GY, 3), own))
    return out


def _ranks(values: np.ndarray) -> np.ndarray:
    """Each value's rank among ``values``, scaled to [0, 1] (0: the coldest)."""
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[np.argsort(values, kind="stable")] = np.arange(values.size)
    return ranks / max(1, values.size - 1)


def fit_target_calibration(samples: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """The mean quantile difference, clinical minus predicted, per level rank.

    Parameters
    ----------
    samples : iterable of (inputs, predicted_gy, reference_gy)
        Per patient: the model's input channels ``[C, z, y, x]``, its (uncalibrated) predicted
        dose and the clinical dose, both ``[z, y, x]`` in Gy.

    Returns
    -------
    dict
        ``{"quantiles": QUANTILES, "levels": [[...], ...], "patients": [n, ...]}``: per level rank
        present in any sample, ``QUANTILES`` fractions of the level's dose, and how many patients
        each was fitted on. The card keeps it as ``target_calibration``.

    Raises
    ------
    ValueError
        No sample has a target of at least :data:`MIN_FIT_VOXELS` voxels.
    """
    q = np.linspace(0.0, 1.0, QUANTILES)
    sums: list[np.ndarray] = []
    counts: list[int] = []
    for inputs, predicted, reference in samples:
        for rank, dose_gy, own in target_levels(inputs):
            if own.sum() < MIN_FIT_VOXELS:
                continue
            diff = (np.quantile(reference[own], q) - np.quantile(predicted[own], q)) / dose_gy
            while len(sums) <= rank:
                sums.append(np.zeros(QUANTILES))
                counts.append(0)
            sums[rank] += diff
            counts[rank] += 1
    if not any(counts):
        raise ValueError(f"no target of at least {MIN_FIT_VOXELS} voxels to fit a calibration on")
    # A rank no patient had (none with a third level, say) keeps no curve: it stays uncalibrated.
    levels = [[round(float(v), 5) for v in s / c] if c else [] for s, c in zip(sums, counts)]
    return {"quantiles": QUANTILES, "levels": levels, "patients": counts}


def calibrate_targets(dose_gy: np.ndarray, inputs: np.ndarray, calibration: Mapping[str, Any] | None) -> np.ndarray:
    """``dose_gy`` with each target's quantile correction added (see the module's docstring).

    Parameters
    ----------
    dose_gy : np.ndarray
        Predicted dose ``[z, y, x]`` in Gy.
    inputs : np.ndarray
        The input channels it was predicted from (:func:`target_levels` reads the targets).
    calibration : Mapping or None
        A card's ``target_calibration`` (:func:`fit_target_calibration`); None returns
        ``dose_gy`` as it is.

    Returns
    -------
    np.ndarray
        float32 ``[z, y, x]`` in Gy, a new array unless ``calibration`` is None.
    """
    if not calibration:
        return dose_gy
    curves: Sequence[Sequence[float]] = calibration["levels"]
    q = np.linspace(0.0, 1.0, int(calibration["quantiles"]))
    out = dose_gy.astype(np.float32, copy=True)
    for rank, level_gy, own in target_levels(inputs):
        if rank >= len(curves) or not curves[rank]:
            continue
        values = dose_gy[own]
        out[own] = values + level_gy * np.interp(_ranks(values), q, curves[rank])
    return out
