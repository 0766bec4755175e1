"""Dose prediction executor: the built-in dose model on a case's CT and contours -> a predicted RTDOSE."""

from __future__ import annotations

import functools
import json
import time
from typing import Any

import numpy as np
from pydicom.uid import generate_uid

from rtgrid.engines.dicomrt.rtdose import write_rtdose
from rtgrid.engines.dose_prediction import (
    dvh_metrics, load_dose_package, model_spacing, predict_patient_dose, prediction_options,
)
from rtgrid.engines.dose_prediction.package import BUILTIN_HN
from rtgrid.engines.imaging.volume import ImageSeries
from rtgrid.engines.optimization.order import MedicalOrder, load_order
from rtgrid.protos.grid_contract import PredictDoseCall

from .files import artifact, dataset_bytes
from .plan import structures_on_ct

@functools.lru_cache(maxsize=1)
def _model():
    # Loaded once per agent process: shards of later jobs reuse it.
    return load_dose_package(BUILTIN_HN)


def predicted_dose_on_ct(series: ImageSeries, masks: dict[str, np.ndarray], order: MedicalOrder, body: str,
                         model: str) -> tuple[np.ndarray, dict[str, Any], str]:
    """The built-in model's dose (Gy, CT grid) for ``order``'s prescription levels, with its card and hash.

    Parameters
    ----------
    masks : dict of str to np.ndarray
        Structures on the CT grid (every target of the order, ``body``, and the organs at risk
        the model knows, when contoured).
    model : str
        ``NAME@VERSION:SHA256`` the master recorded at submission.

    Raises
    ------
    RuntimeError
        This agent's built-in model is not the one the job names (an agent of another release).
    """
    network, card, sha256 = _model()
    if model.rpartition(":")[2] != sha256:
        raise RuntimeError(f"the job asks for dose model {model}; this agent ships {card['name']}@{card['version']}:{sha256}")
    targets = [(level.dose_gy, masks[level.target]) for level in order.levels]
    dose = predict_patient_dose(network, series.volume.voxels, masks[body], masks, targets, series.volume.spacing_mm,
                                **prediction_options(card))
    return dose, card, sha256


def predict_dose_shard(call: PredictDoseCall) -> dict[str, Any]:
    """Predict the dose of a case with the built-in model (:func:`predicted_dose_on_ct`, whose
    ``call.model`` check applies); publish ``RD.predicted.dcm`` and ``predicted-dose.json``."""
    start = time.monotonic()
    series, body = call.series, call.body
    masks = structures_on_ct(series, call.rtstructs)
    order = load_order(call.order_text, set(masks))
    dose, card, sha256 = predicted_dose_on_ct(series, masks, order, body, call.model)
    ct = series.volume
    identity = f"{card['name']}@{card['version']} {sha256[:12]}"
    # write_rtdose writes plan doses only (Referenced RT Plan is type 1C): the UID is that of the
    # plan still to be made, which this prediction is for.
    plan_uid = generate_uid()
    ds = write_rtdose(dose, ct, series, referenced_rtplan_uid=plan_uid, comment="predicted dose, not a deliverable plan")
    ds.SeriesDescription = f"predicted dose {identity}"[:64]
    spacing = [round(float(s), 3) for s in ct.spacing_mm]
    notes = []
    grid = [round(s, 3) for s in model_spacing(ct.spacing_mm)]
    if grid != spacing:
        notes.append(f"CT spacing {spacing} mm lies outside the grids the model learned on: predicted on {grid} mm "
                     "and interpolated back to the CT")
    if card.get("target_calibration"):
        notes.append("each target's dose-volume histogram is calibrated to the shape of the training plans' (the "
                     "card's target_calibration); the dose outside the targets is the network's")
    summary = {
        "model": {"name": card["name"], "version": card["version"], "sha256": sha256, "validation": card["validation"]},
        "levels": [{"target": level.target, "dose_gy": level.dose_gy} for level in order.levels],
        "structures": sorted(masks),
        "body": body,
        "max_dose_gy": round(float(dose.max()), 3),
        "dvh_criteria_gy": {k: round(v, 3) for k, v in dvh_metrics(dose, masks, ct.voxel_volume_mm3).items()},
        "referenced_rtplan_uid": plan_uid,
        "ct_spacing_mm": spacing,
        "seconds": round(time.monotonic() - start, 2),
        "notes": notes,
    }
    return artifact(
        ("RD.predicted.dcm", "rtdose", "RTDOSE", dataset_bytes(ds)),
        ("predicted-dose.json", "report", "", json.dumps(summary, indent=2).encode()),
    )
