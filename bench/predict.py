"""Dose prediction benchmark: the built-in head-and-neck dose model on the OpenKBP validation patients.

``python -m bench.predict`` (``make bench-predict``) predicts each validation patient's dose (all 33
unless ``--patients N``) exactly as the grid's executor does (inputs from the 70/63/56 Gy levels,
the organs at risk and the possible dose mask), and scores it as the OpenKBP challenge does: the
dose score (MAE over the possible dose mask, Gy) and the DVH score (Gy). Timed per patient
(inputs + prediction, after the model is loaded), on CPU with ``--threads`` torch threads, or on
CUDA with autocast when a GPU is present.

Human-readable lines go to stderr; stdout carries exactly one JSON line with all figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from rtgrid.engines.dose_prediction import dose_score, dvh_score, load_dose_package, predict_dose, prediction_options
from rtgrid.engines.dose_prediction.package import BUILTIN_HN
from rtgrid.engines.dose_prediction.train import openkbp_inputs
from rtgrid.engines.imaging.openkbp import load_openkbp_patient, openkbp_patients

VALIDATION = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "openkbp" / "validation"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=0, help="the first N validation patients (0: all)")
    parser.add_argument("--data", type=Path, default=VALIDATION)
    parser.add_argument("--package", type=Path, default=BUILTIN_HN)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, card, sha256 = load_dose_package(args.package)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    for path in openkbp_patients(args.data)[: args.patients or None]:
        patient = load_openkbp_patient(path)
        if patient.dose_gy is None:
            print(f"{patient.patient_id}: no clinical dose, skipped", file=sys.stderr)
            continue
        start = time.perf_counter()
        predicted = predict_dose(model, openkbp_inputs(patient), patient.possible_dose_mask, device=device,
                                 **prediction_options(card))
        seconds = time.perf_counter() - start
        row = {"patient": patient.patient_id, "seconds": round(seconds, 3),
               "dose_score_gy": round(dose_score(predicted, patient.dose_gy, patient.possible_dose_mask), 4),
               "dvh_score_gy": round(dvh_score(predicted, patient.dose_gy, patient.masks, patient.volume.voxel_volume_mm3), 4)}
        rows.append(row)
        print(f"{row['patient']}: dose score {row['dose_score_gy']:.3f} Gy, DVH score {row['dvh_score_gy']:.3f} Gy, "
              f"{seconds:.2f} s", file=sys.stderr)
    if not rows:
        print(f"no patient with a clinical dose in {args.data}", file=sys.stderr)
        return 1
    result = {
        "model": {"name": card["name"], "version": card["version"], "sha256": sha256},
        "device": device, "threads": args.threads, "patients": len(rows),
        "dose_score_gy": round(float(np.mean([r["dose_score_gy"] for r in rows])), 4),
        "dvh_score_gy": round(float(np.mean([r["dvh_score_gy"] for r in rows])), 4),
        "seconds_per_patient": round(float(np.mean([r["seconds"] for r in rows])), 3),
        "openkbp_winner_test": {"dose_score_gy": 2.429, "dvh_score_gy": 1.478},
        "per_patient": rows,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
