"""``rtgrid eval-seg``: how well one set of contours agrees with another, with the study's metrics.

DSC, Jaccard, symmetric average surface distance, Hausdorff distance and its 95th percentile (mm,
with the CT's spacing), per structure and as means — e.g. the grid's automatic contours against a
physician's, on the same CT. Runs locally; plugs into the ``rtgrid`` program like ``rtgrid up``.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pydicom
import typer

from rtgrid.engines.dicomrt.rtstruct import read_rtstruct
from rtgrid.engines.imaging.intake import load_series_dir
from rtgrid.engines.segmentation.metrics import CaseMetrics, compare_masks


def evaluate_structure_sets(ct_dir: Path, reference: Path, test: Path, names: list[str] | None = None) -> CaseMetrics:
    """Metrics of every structure both structure sets hold (or of ``names``), on ``ct_dir``'s grid.

    Raises
    ------
    ValueError
        When a named structure is missing from either set.
    """
    series = load_series_dir(ct_dir)
    uid = series.frame_of_reference_uid
    ref = read_rtstruct(pydicom.dcmread(io.BytesIO(reference.read_bytes())), series.volume, frame_of_reference_uid=uid)
    tst = read_rtstruct(pydicom.dcmread(io.BytesIO(test.read_bytes())), series.volume, frame_of_reference_uid=uid)
    wanted = names or sorted(set(ref) & set(tst))
    missing = [n for n in wanted if n not in ref or n not in tst]
    if missing:
        raise ValueError(f"structure(s) {', '.join(missing)} not in both structure sets "
                         f"(reference: {', '.join(sorted(ref))}; test: {', '.join(sorted(tst))})")
    spacing = tuple(series.volume.spacing_mm)
    return CaseMetrics(series.series_instance_uid, tuple(compare_masks(ref[n], tst[n], spacing, n) for n in wanted))


def eval_seg_command(
    ct: Path = typer.Option(..., exists=True, file_okay=False, help="The CT series both structure sets are drawn on."),
    reference: Path = typer.Option(..., exists=True, dir_okay=False, help="Reference RTSTRUCT (e.g. the physician's)."),
    test: Path = typer.Option(..., exists=True, dir_okay=False, help="RTSTRUCT to evaluate (e.g. the grid's)."),
    structure: list[str] = typer.Option([], help="Structures to compare (default: all in both)."),
    fmt: str = typer.Option("text", "--format", help="text or json (one object per structure per line, then the means)."),
) -> None:
    """Compare two structure sets: DSC, JI, ASD, HD and HD95 (mm) per structure and their means."""
    try:
        metrics = evaluate_structure_sets(ct, reference, test, structure or None)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if fmt == "json":  # one object per line, like every command: each structure, then the means
        record = metrics.to_dict()
        for structure in record["structures"]:
            print(json.dumps({"case_id": record["case_id"], **structure}, sort_keys=True, allow_nan=False))
        print(json.dumps({"case_id": record["case_id"], "mean": record["mean"]}, sort_keys=True, allow_nan=False))
        return
    print(f"{'structure':<20} {'DSC':>6} {'JI':>6} {'ASD mm':>8} {'HD mm':>8} {'HD95 mm':>8} {'ref ml':>9} {'test ml':>9}")
    for s in metrics.structures:
        print(f"{s.name:<20} {s.dsc:6.3f} {s.ji:6.3f} {s.asd_mm:8.2f} {s.hd_mm:8.2f} {s.hd95_mm:8.2f} "
              f"{s.reference_volume_ml:9.1f} {s.test_volume_ml:9.1f}")
    means = {f: metrics.mean(f) for f in ("dsc", "ji", "asd_mm", "hd_mm", "hd95_mm")}
    print(f"{'mean':<20} " + " ".join(f"{means[f]:{w}.{p}f}" if math.isfinite(means[f]) else f"{'-':>{w}}"
                                       for f, w, p in (("dsc", 6, 3), ("ji", 6, 3), ("asd_mm", 8, 2), ("hd_mm", 8, 2),
                                                       ("hd95_mm", 8, 2))))


__all__ = ["eval_seg_command", "evaluate_structure_sets"]
