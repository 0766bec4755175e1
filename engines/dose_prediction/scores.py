"""OpenKBP's scores of a predicted dose against the clinical one (Babier et al. 2021).

``dose_score``: mean absolute dose error over the possible dose mask (Gy). ``dvh_score``: mean
absolute error over the DVH criteria of the structures present: D99, D95 and D1 of each target;
D0.1cc of Brainstem, SpinalCord and Bone_Mandible; the mean dose of the parotids, esophagus and
larynx. Percentiles as the challenge's own code takes them (``numpy.percentile``, linear).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

TARGET_NAMES = ("PTV70", "PTV63", "PTV56")
MAX_DOSE_OARS = ("Brainstem", "SpinalCord", "Bone_Mandible")
MEAN_DOSE_OARS = ("Parotid_L", "Parotid_R", "Esophagus", "Larynx")


def dose_score(predicted_gy: np.ndarray, reference_gy: np.ndarray, possible_dose_mask: np.ndarray) -> float:
    """Mean absolute error (Gy) over ``possible_dose_mask``.

    Raises
    ------
    ValueError
        Shapes differ or the mask is empty.
    """
    if not predicted_gy.shape == reference_gy.shape == possible_dose_mask.shape:
        raise ValueError(f"shapes differ: {predicted_gy.shape}, {reference_gy.shape}, {possible_dose_mask.shape}")
    mask = possible_dose_mask.astype(bool)
    if not mask.any():
        raise ValueError("the possible dose mask is empty")
    return float(np.abs(predicted_gy[mask].astype(np.float64) - reference_gy[mask]).mean())


def dvh_metrics(dose_gy: np.ndarray, masks: Mapping[str, np.ndarray], voxel_volume_mm3: float) -> dict[str, float]:
    """The DVH criteria of one dose on the structures present (``"PTV70 D99"`` ... in Gy).

    Parameters
    ----------
    dose_gy : np.ndarray
        Dose ``[z, y, x]`` in Gy.
    masks : Mapping[str, np.ndarray]
        TG-263 name -> bool mask; empty masks and names without a criterion are skipped.
    voxel_volume_mm3 : float
        For D0.1cc: the hottest 0.1 cc is at least one voxel.
    """
    out: dict[str, float] = {}
    for name, mask in masks.items():
        values = dose_gy[mask.astype(bool)].astype(np.float64)
        if values.size == 0:
            continue
        if name in TARGET_NAMES:
            out[f"{name} D99"] = float(np.percentile(values, 1))
            out[f"{name} D95"] = float(np.percentile(values, 5))
            out[f"{name} D1"] = float(np.percentile(values, 99))
        elif name in MAX_DOSE_OARS:
            voxels = max(1, round(100.0 / voxel_volume_mm3))
            out[f"{name} D0.1cc"] = float(np.percentile(values, 100.0 - voxels / values.size * 100.0))
        elif name in MEAN_DOSE_OARS:
            out[f"{name} mean"] = float(values.mean())
    return out


def dvh_score(predicted_gy: np.ndarray, reference_gy: np.ndarray, masks: Mapping[str, np.ndarray], voxel_volume_mm3: float) -> float:
    """Mean absolute difference (Gy) of :func:`dvh_metrics` between the two doses.

    Raises
    ------
    ValueError
        No structure present has a criterion.
    """
    predicted = dvh_metrics(predicted_gy, masks, voxel_volume_mm3)
    reference = dvh_metrics(reference_gy, masks, voxel_volume_mm3)
    if not reference:
        raise ValueError(f"no structure with a DVH criterion among {sorted(masks)}")
    return float(np.mean([abs(predicted[k] - reference[k]) for k in reference]))
