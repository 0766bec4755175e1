"""Real head-and-neck patients planned through the grid, scored against their clinical plans.

For each OpenKBP validation patient (``../shared/data/openkbp/validation``): the patient is written
as a DICOM CT series and an RTSTRUCT of its clinical contours (plus the body outline), uploaded to
a grid on 127.0.0.1 (a master, two 1-CPU agents), and planned with the standard head-and-neck order
(``engines/optimization/orders/head-and-neck-sib.yaml``, fitted to the structures the patient has).
Our RTDOSE and the clinical dose are scored on the same masks of the patient's own grid with the
same criteria (``engines/optimization/clinical_criteria.py``: the OpenKBP DVH criteria with
clinical limits); per patient the criteria met by each are counted.

Each patient is planned twice by default (``--goals both``): with the order's goals
(``goals: order``) and with the knowledge-based prediction mimicked as well (``goals: predicted``).

Ends with one JSON line: per patient and per goal source the criteria met (ours, clinical), PTV70
D95, the organs' mean doses, plan time and the job's state; per goal source the share of patients
where ours meets at least as many criteria as the clinical plan (goal >= 0.9), the minimum PTV70
D95 in % of 70 Gy (goal >= 95 on every patient), the organs' mean doses averaged over patients, and
the mean planning time.

    python -m bench.plan_hn [--patients 33] [--beams 9] [--dose-grid-mm 4] [--goals both|order|predicted]
    python -m bench.plan_hn --patient pt_225 --goals order --keep /tmp/pt_225   # one patient, its results kept
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pydicom

from bench.grid import BenchError, BenchGrid, _load, grid_session, run_benchmark, say, watch_job
from rtgrid.client.sdk import Client, state_name
from rtgrid.engines.dicomrt.rtdose import read_rtdose
from rtgrid.engines.dose.grid import resample_dose
from rtgrid.engines.imaging.openkbp import load_openkbp_patient, openkbp_patients, write_openkbp_dicom
from rtgrid.engines.optimization.clinical_criteria import head_and_neck_criteria
from rtgrid.engines.optimization.standard_orders import HEAD_AND_NECK, standard_order_text
from rtgrid.protos.v1 import common_pb2

VALIDATION = Path(__file__).resolve().parents[2] / "shared" / "data" / "openkbp" / "validation"


OARS = ("Brainstem", "SpinalCord", "Parotid_L", "Parotid_R", "Esophagus", "Larynx", "Bone_Mandible")


def plan_patient(client: Client, npz: Path, params: dict[str, str], work: Path, timeout_s: float,
                 goals: str = "order") -> dict:
    """One patient through the grid; its criteria, ours and the clinical plan's."""
    patient = load_openkbp_patient(npz)
    work = work / goals
    written = write_openkbp_dicom(patient, work / patient.patient_id)
    order = f"goals: {goals}\n" + standard_order_text(HEAD_AND_NECK, [*patient.masks, "BODY"])
    started = time.perf_counter()
    case_id = client.upload_folder(written.ct_dir, written.rtstruct_path, label=patient.patient_id).case.case_id
    job = client.submit(case_id, "plan", params={**params, "order": order})
    events = watch_job(client, job.job_id, timeout_s)
    wall_s = time.perf_counter() - started
    last = events[-1][1]
    figures: dict = {"state": state_name(last.state), "plan_s": round(wall_s, 1)}
    artifacts = {a.name: a for a in client.artifacts(job.job_id)}
    voxel_cc = float(patient.volume.voxel_volume_mm3) / 1000.0
    clinical = head_and_neck_criteria(patient.dose_gy, patient.masks, voxel_cc) if patient.dose_gy is not None else []
    figures["clinical_met"] = sum(c.met for c in clinical)
    figures["criteria"] = len(clinical)
    if "plan-report.json" in artifacts:
        report = json.loads(client.download(artifacts["plan-report.json"], work / "out" / patient.patient_id).read_text())
        figures["release"] = {k: report["release"][k] for k in ("released", "reasons", "warnings")}
        figures["unmet_goals"] = report["optimizer"].get("unmet_goals", [])
        figures["goal_rounds"] = report["optimizer"].get("goal_rounds", 0)
    if last.state != common_pb2.JOB_STATE_SUCCEEDED:
        for name in ("dose-wash.png", "dvh.png"):  # a failed plan's pictures, for its review (see --keep)
            if name in artifacts:
                client.download(artifacts[name], work / "out" / patient.patient_id)
        figures.update(ours_met=0, message=last.message[:300])
        return figures
    rd = client.download(artifacts["RD.standard.dcm"], work / "out" / patient.patient_id)
    dose, grid = read_rtdose(pydicom.dcmread(rd))
    ours_on_ct = resample_dose(dose, grid, patient.volume)
    ours = head_and_neck_criteria(ours_on_ct, patient.masks, voxel_cc)
    figures["ours_met"] = sum(c.met for c in ours)
    figures["ptv70_d95_pct"] = round(100.0 * next(c.value_gy for c in ours if c.name == "PTV70 D95") / 70.0, 2)
    figures["per_criterion"] = {c.name: {"ours": round(c.value_gy, 2), "clinical": round(k.value_gy, 2),
                                         "limit": c.limit_gy} for c, k in zip(ours, clinical)}
    # what ours misses where the clinical plan meets it, and the reverse: the criteria to work on
    figures["missed_where_clinical_met"] = [c.name for c, k in zip(ours, clinical) if k.met and not c.met]
    figures["met_where_clinical_missed"] = [c.name for c, k in zip(ours, clinical) if c.met and not k.met]
    figures["oar_mean_gy"] = {name: {"ours": round(float(ours_on_ct[patient.masks[name]].mean()), 2),
                                     **({"clinical": round(float(patient.dose_gy[patient.masks[name]].mean()), 2)}
                                        if patient.dose_gy is not None else {})}
                              for name in OARS if name in patient.masks and patient.masks[name].any()}
    return figures


def summarize(runs: list[dict]) -> dict:
    """The goals' figures over the patients of one goal source."""
    succeeded = [r for r in runs if r["state"] == "succeeded"]
    oar_means = {name: round(statistics.mean(r["oar_mean_gy"][name]["ours"] for r in succeeded if name in r["oar_mean_gy"]), 2)
                 for name in OARS if any(name in r.get("oar_mean_gy", {}) for r in succeeded)}
    return {
        "patients": len(runs),
        "succeeded": len(succeeded),
        "ours_at_least_clinical_fraction": round(sum(r.get("ours_met", 0) >= r["clinical_met"] for r in runs)
                                                 / max(len(runs), 1), 3),
        "ours_criteria_met_mean": round(statistics.mean(r.get("ours_met", 0) for r in runs), 2) if runs else None,
        "clinical_criteria_met_mean": round(statistics.mean(r["clinical_met"] for r in runs), 2) if runs else None,
        "ptv70_d95_pct_min": min((r["ptv70_d95_pct"] for r in succeeded), default=None),
        "oar_mean_gy": oar_means,
        "plan_s_mean": round(statistics.mean(r["plan_s"] for r in runs), 1) if runs else None,
        "goals": {"ours_at_least_clinical_fraction": 0.9, "ptv70_d95_pct_min": 95.0},
    }


def run(args: argparse.Namespace, figures: dict) -> None:
    if not VALIDATION.is_dir():
        raise BenchError(f"needs {VALIDATION} (../shared/data beside the repository)")
    patients = openkbp_patients(VALIDATION)[: args.patients]
    if args.patient:
        by_id = {npz.stem: npz for npz in openkbp_patients(VALIDATION)}
        unknown = sorted(set(args.patient) - set(by_id))
        if unknown:
            raise BenchError(f"no validation patient {', '.join(unknown)} in {VALIDATION}")
        patients = [by_id[name] for name in args.patient]
    params = {"beams": str(args.beams), "dose_grid_mm": str(args.dose_grid_mm)}
    figures["config"] = {**params, "patients": len(patients), "agents": 2, "agent_cpus": 1, "cpu_count": os.cpu_count(),
                         "order": HEAD_AND_NECK}
    figures["load_avg_start"] = _load()
    with tempfile.TemporaryDirectory(prefix="rtgrid-bench-plan-hn-") as tmp_name:
        tmp = Path(tmp_name)
        work = args.keep if args.keep is not None else tmp / "work"
        (tmp / "data").mkdir()
        (tmp / "logs").mkdir()
        grid = BenchGrid(tmp / "data", tmp / "logs", args.head_object_store_mb)
        with grid_session(grid):
            grid.start_ray()
            address = grid.start_master()
            for name in ("bench-a", "bench-b"):
                grid.start_agent(name, cpus=1)
            sources = ("order", "predicted") if args.goals == "both" else (args.goals,)
            per_patient: dict[str, dict[str, dict]] = {source: {} for source in sources}
            with Client(address) as client:
                for npz in patients:
                    for source in sources:
                        r = plan_patient(client, npz, params, work, args.job_timeout, source)
                        per_patient[source][npz.stem] = r
                        say(f"{npz.stem} (goals: {source}): {r['state']} in {r['plan_s']:.0f} s; criteria met ours "
                            f"{r.get('ours_met', 0)}/{r['criteria']}, clinical {r['clinical_met']}/{r['criteria']}; "
                            f"PTV70 D95 {r.get('ptv70_d95_pct', float('nan')):.1f} %; ours misses where clinical "
                            f"meets: {r.get('missed_where_clinical_met', [])}")
    figures["per_patient"] = per_patient
    figures["summary"] = {source: summarize(list(runs.values())) for source, runs in per_patient.items()}
    figures["load_avg_end"] = _load()
    say(f"summary: {figures['summary']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=33, help="the first N validation patients")
    parser.add_argument("--patient", action="append", default=[], metavar="ID",
                        help="plan this validation patient (e.g. pt_225; repeatable) instead of the first N")
    parser.add_argument("--keep", type=Path, default=None, metavar="DIR",
                        help="keep each patient's DICOM and fetched results (report, RTDOSE) under DIR")
    parser.add_argument("--beams", type=int, default=9, help="equispaced coplanar beams")
    parser.add_argument("--dose-grid-mm", type=float, default=4.0, help="dose grid spacing (mm)")
    parser.add_argument("--head-object-store-mb", type=int, default=1024, help="object store of the Ray head (MiB)")
    parser.add_argument("--job-timeout", type=float, default=1800.0, help="seconds allowed per plan job")
    parser.add_argument("--goals", choices=("both", "order", "predicted"), default="both",
                        help="plan with the order's goals, with the predicted dose mimicked too, or both")
    return run_benchmark("plan-hn", run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
