"""Scoring a head-and-neck organ-at-risk model on OpenKBP patients, laid out like the NPC study.

Each patient's CT goes through :class:`SegmentationRunner` and :func:`postprocess` exactly as on
the grid; every organ the patient's clinicians contoured is compared with the model's (DSC,
Jaccard, ASD and HD95 in mm on the CT's own grid, ``rtgrid.engines.segmentation.metrics``).
Organs that were not contoured are not scored. Results are given per organ as mean ± sd over
patients, as in the DeepLabv3+ vs U-Net nasopharynx study (Table 2 there: DSC, JI, ASD, HD).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rtgrid.engines.imaging.openkbp import OAR_NAMES, load_openkbp_patient
from rtgrid.engines.segmentation.deep.inference import SegmentationRunner
from rtgrid.engines.segmentation.deep.postprocess import postprocess
from rtgrid.engines.segmentation.metrics import compare_masks

METRICS = ("dsc", "ji", "asd_mm", "hd95_mm")
GOALS = {"mean_dsc": 0.80, "Bone_Mandible": 0.90, "Brainstem": 0.80, "SpinalCord": 0.80, "Parotid_L": 0.75, "Parotid_R": 0.75}
"""Goals of issue 11 for the validation DSC (mean over the seven organs, and per organ)."""


def evaluate_openkbp(
    runner: SegmentationRunner, paths: Sequence[Path], progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Segment each patient and score every contoured organ.

    Parameters
    ----------
    runner : SegmentationRunner
        The model, warm.
    paths : sequence of Path
        OpenKBP ``pt_N.npz`` files.
    progress : callable, optional
        Receives one line per patient.

    Returns
    -------
    dict
        ``{"patients": [{"patient_id", "slices", "ms_per_slice", "organs": {TG-263 name: metrics}}],
        "summary": summarize(...)}``.
    """
    say = progress or (lambda line: None)
    by_name = {label.rtstruct_name: label.index for label in runner.card.labels}
    patients = []
    for number, path in enumerate(paths, start=1):
        patient = load_openkbp_patient(path)
        started = time.perf_counter()
        raw = runner.predict_volume(patient.volume).voxels
        seconds = time.perf_counter() - started
        labels = postprocess(raw, runner.card)
        organs = {}
        for name in OAR_NAMES:
            if name in patient.masks and name in by_name:
                m = compare_masks(patient.masks[name], labels == by_name[name], patient.volume.spacing_mm, name)
                organs[name] = {"dsc": m.dsc, "ji": m.ji, "asd_mm": _finite(m.asd_mm), "hd95_mm": _finite(m.hd95_mm)}
        nz = patient.volume.shape[0]
        patients.append({"patient_id": patient.patient_id, "slices": nz, "ms_per_slice": 1000 * seconds / nz, "organs": organs})
        mean = np.mean([o["dsc"] for o in organs.values()]) if organs else float("nan")
        say(f"{number}/{len(paths)} {patient.patient_id}: mean DSC {mean:.3f} over {len(organs)} organs, {1000 * seconds / nz:.1f} ms/slice")
    return {"patients": patients, "summary": summarize(patients)}


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def summarize(patients: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean, sd and count per organ and metric; the mean DSC over organs; ms per slice.

    An infinite distance (the model drew nothing where the clinician drew the organ) is left out of
    that organ's distance means and counted under ``"missed"``.
    """
    organs: dict[str, Any] = {}
    for name in OAR_NAMES:
        rows = [p["organs"][name] for p in patients if name in p["organs"]]
        if not rows:
            continue
        entry: dict[str, Any] = {"cases": len(rows), "missed": sum(r["hd95_mm"] is None for r in rows)}
        for metric in METRICS:
            values = np.array([r[metric] for r in rows if r[metric] is not None], dtype=float)
            entry[metric] = {"mean": float(values.mean()) if len(values) else None,
                             "sd": float(values.std(ddof=1)) if len(values) > 1 else None}
        organs[name] = entry
    times = [p["ms_per_slice"] for p in patients]
    return {
        "organs": organs,
        "mean_dsc": float(np.mean([o["dsc"]["mean"] for o in organs.values()])) if organs else 0.0,
        "ms_per_slice": {"mean": float(np.mean(times)), "sd": float(np.std(times, ddof=1)) if len(times) > 1 else 0.0},
        "patients": len(patients),
    }


def paired_p_values(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Paired t-test p-values per organ and metric between two models scored on the same patients."""
    from scipy.stats import ttest_rel

    out: dict[str, dict[str, float]] = {}
    b_by_id = {p["patient_id"]: p for p in b}
    for name in OAR_NAMES:
        out[name] = {}
        for metric in METRICS:
            pairs = [(p["organs"][name][metric], b_by_id[p["patient_id"]]["organs"][name][metric]) for p in a
                     if name in p["organs"] and p["patient_id"] in b_by_id and name in b_by_id[p["patient_id"]]["organs"]]
            pairs = [(x, y) for x, y in pairs if x is not None and y is not None]
            if len(pairs) > 2:
                x, y = np.array(pairs).T
                out[name][metric] = float(ttest_rel(x, y).pvalue) if np.any(x != y) else 1.0
    return out


def _cell(entry: dict[str, Any], metric: str, digits: int) -> str:
    value = entry[metric]
    if value["mean"] is None:
        return "–"
    sd = f" ± {value['sd']:.{digits}f}" if value["sd"] is not None else ""
    return f"{value['mean']:.{digits}f}{sd}"


def markdown_table(summaries: dict[str, dict[str, Any]], p_values: dict[str, dict[str, float]] | None = None) -> str:
    """Per organ and model: DSC, JI, ASD (mm), HD95 (mm) as mean ± sd (the NPC study's layout),
    with the paired p-value of the DSC between two models when given."""
    models = list(summaries)
    header = "| Organ (TG-263) | n | Model | DSC | JI | ASD (mm) | HD95 (mm) |" + (" p (DSC) |" if p_values else "")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for name in OAR_NAMES:
        for position, model in enumerate(models):
            entry = summaries[model]["organs"].get(name)
            if entry is None:
                continue
            p = ""
            if p_values:
                value = p_values.get(name, {}).get("dsc")
                p = (" " + ("< 0.001" if value is not None and value < 0.001 else f"{value:.3f}" if value is not None else "–") + " |"
                     if position == 0 else " |")
            lines.append(f"| {name if position == 0 else ''} | {entry['cases'] if position == 0 else ''} | {model} | "
                         f"{_cell(entry, 'dsc', 3)} | {_cell(entry, 'ji', 3)} | {_cell(entry, 'asd_mm', 2)} | "
                         f"{_cell(entry, 'hd95_mm', 2)} |{p}")
    for position, model in enumerate(models):
        s = summaries[model]
        lines.append(f"| **mean of organs** | {s['patients'] if position == 0 else ''} | {model} | {s['mean_dsc']:.3f} | | | |"
                     + (" |" if p_values else ""))
    timing = "; ".join(f"{m}: {summaries[m]['ms_per_slice']['mean']:.1f} ± {summaries[m]['ms_per_slice']['sd']:.1f} ms/slice"
                       for m in models)
    return "\n".join(lines) + f"\n\nInference (CT in, post-processed labels out, CPU): {timing}.\n"


def goals_met(summary: dict[str, Any]) -> dict[str, bool]:
    """Issue 11's goals, each True or False for a summary."""
    out = {"mean_dsc": summary["mean_dsc"] >= GOALS["mean_dsc"]}
    for name, goal in GOALS.items():
        if name != "mean_dsc":
            out[name] = name in summary["organs"] and summary["organs"][name]["dsc"]["mean"] >= goal
    return out


OPENKBP_CITATION = (
    "A. Babier, B. Zhang, R. Mahmood, K.L. Moore, T.G. Purdie, A.L. McNiven, T.C.Y. Chan, "
    '"OpenKBP: The open-access knowledge-based planning grand challenge and dataset", '
    "Med. Phys. 48 (2021) 5549-5561, doi:10.1002/mp.14845"
)


def finalize_package(trained_dir: Path, validation_paths: Sequence[Path], out_dir: Path,
                     progress: Callable[[str], None] | None = None, name: str | None = None,
                     version: str | None = None) -> tuple[str, dict[str, Any]]:
    """Score a trained package on the OpenKBP validation patients and write the shipped package.

    The card keeps the trainer's record and gains: the validation scores on each CT's own grid
    after post-processing (``validation_metrics["openkbp_validation"]``), the data's citation and
    licence, the split and the preprocessing (``extra``).

    Parameters
    ----------
    trained_dir : Path
        ``OUT/package`` of ``rtgrid train-seg``.
    validation_paths : sequence of Path
        The validation ``.npz`` files.
    out_dir : Path
        Where to write the final package.
    progress : callable, optional
        Receives one line per patient.
    name, version : str, optional
        The model's name and version in the final card (the trained card's when ``None``).

    Returns
    -------
    (str, dict)
        The package hash and the full evaluation (per patient and summary).
    """
    import dataclasses

    from rtgrid.engines.segmentation.deep.package import load_package, save_package

    model, card = load_package(trained_dir)
    runner = SegmentationRunner((model, card))
    evaluation = evaluate_openkbp(runner, validation_paths, progress)
    data = card.training_data
    extra = dict(card.extra) | {
        "training_data": {
            "source": "OpenKBP grand challenge, training set (../shared/data/openkbp/train)",
            "citation": OPENKBP_CITATION,
            "licence": "MIT (open-kbp repository)",
            "split": f"{len(data.get('training_cases', []))} training patients (train/), model selection and "
                     f"validation on {len(data.get('validation_cases', []))} patients (validation/); the challenge's "
                     "test patients were never used",
            "partial_labels": "an organ a patient lacks was not contoured: left out of that patient's loss",
        },
        "preprocessing": (f"2-D axial slices, HU window {list(card.hu_window)} mapped to [0, 1], bilinear in-plane "
                          f"resampling to {list(card.input_spacing_mm)} mm; logits resampled back to the CT grid"
                          f"{_test_time_note(card)}; post-processing: largest 3-D component per organ, hole filling"),
        "body_region": "head and neck (skull base to upper thorax); the grid skips the model on CTs without it",
        "evaluation": "python -m rtgrid.engines.segmentation.deep.hn_eval (make model-hn)",
    }
    metrics = dict(card.validation_metrics)
    metrics = {"selection_on_model_grid": metrics, "openkbp_validation": evaluation["summary"],
               "mean_dsc": evaluation["summary"]["mean_dsc"]}
    final = dataclasses.replace(card, name=name or card.name, version=version or card.version,
                                validation_metrics=metrics, extra=extra)
    return save_package(out_dir, model, final), evaluation


def _test_time_note(card) -> str:
    """What inference averages, as the preprocessing note says it."""
    parts = []
    if card.test_time_mirror:
        parts.append("each slice with its mirror image (" + ", ".join(" and ".join(p) for p in card.test_time_mirror)
                     + " swapped)")
    if card.test_time_zooms:
        parts.append("at in-plane zooms " + ", ".join(f"{z:g}" for z in card.test_time_zooms))
    return "; class probabilities averaged over " + " and ".join(parts) if parts else ""


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rtgrid.engines.segmentation.deep.hn_eval TRAINED VALIDATION_DIR --out DIR [--compare PACKAGE]``."""
    import argparse
    import json
    import sys

    from rtgrid.engines.imaging.openkbp import openkbp_patients
    from rtgrid.engines.segmentation.deep.package import read_card

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("trained", type=Path, help="OUT/package of rtgrid train-seg")
    parser.add_argument("validation", type=Path, help="folder of OpenKBP validation .npz files")
    parser.add_argument("--out", type=Path, required=True, help="folder for the final package")
    parser.add_argument("--compare", type=Path, help="a package whose card's validation figures to compare with")
    parser.add_argument("--tolerance", type=float, default=0.02, help="DSC difference counted as noise")
    parser.add_argument("--name", help="the model's name in the final card (default: the trained card's)")
    parser.add_argument("--version", help="the model's version in the final card (default: the trained card's)")
    parser.add_argument("--report", type=Path, help="write the full evaluation (per patient) as JSON here")
    args = parser.parse_args(argv)

    def say(line: str) -> None:
        print(f"hn-eval: {line}", file=sys.stderr, flush=True)

    sha, evaluation = finalize_package(args.trained, openkbp_patients(args.validation), args.out, say, args.name,
                                       args.version)
    if args.report:
        args.report.write_text(json.dumps(evaluation, indent=1, sort_keys=True))
    summary = evaluation["summary"]
    say("\n" + markdown_table({read_card(args.out).architecture: summary}))
    result: dict[str, Any] = {"package": str(args.out), "sha256": sha, "mean_dsc": summary["mean_dsc"],
                              "dsc": {k: v["dsc"]["mean"] for k, v in summary["organs"].items()},
                              "goals_met": goals_met(summary)}
    status = 0
    if args.compare:
        shipped = read_card(args.compare).validation_metrics["openkbp_validation"]
        differences = {k: summary["organs"][k]["dsc"]["mean"] - v["dsc"]["mean"] for k, v in shipped["organs"].items()}
        differences["mean_dsc"] = summary["mean_dsc"] - shipped["mean_dsc"]
        result["dsc_minus_shipped"] = differences
        result["matches_shipped"] = all(abs(d) <= args.tolerance for d in differences.values())
        status = 0 if result["matches_shipped"] else 1
    print(json.dumps(result, sort_keys=True))
    return status


if __name__ == "__main__":
    raise SystemExit(main())
