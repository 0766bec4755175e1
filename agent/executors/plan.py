"""Standard-plan executors: set up beams on the dose grid, one dose influence matrix per beam,
then optimize the fluence against the medical order and write the plan's outputs.

The set-up is a :class:`rtgrid.protos.grid_contract.PlanSetup` (density, masks and beams on the
dose grid); it is stored by the master and sent to every beam, optimization and device shard.

The standard plan travels as ``standard-plan.npz``
(:class:`rtgrid.engines.conversion.standard_plan.StandardPlan`, the artifact device conversion
consumes); its RTDOSE references the ``plan_uid`` given in ``plan-report.json``.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import pydicom
import scipy.sparse as sp
from pydicom.uid import generate_uid

from rtgrid.engines.conversion.standard_plan import StandardPlan
from rtgrid.engines.conversion.standard_rtplan import standard_rtplan
from rtgrid.engines.dicomrt.rtdose import write_rtdose
from rtgrid.engines.dicomrt.rtstruct import read_rtstruct
from rtgrid.engines.dose.beams import Beam, BixelGrid, default_isocenter, make_bixel_grid
from rtgrid.engines.dose.density import hu_to_relative_electron_density
from rtgrid.engines.dose.grid import resample_dose, resample_mask, resample_to_dose_grid
from rtgrid.engines.dose.machine import load_machine
from rtgrid.engines.dose.pencil_beam import assemble_dij, compute_beam_dij
from rtgrid.engines.imaging.volume import ImageSeries, Volume
from rtgrid.engines.optimization.coplanar_plan import optimize_on_full_kernel
from rtgrid.engines.optimization.dvh import cumulative_dvh, dose_at_volume, plan_metrics, targets_mask
from rtgrid.engines.optimization.order import load_order
from rtgrid.engines.qa.plan_acceptance import judge_standard_plan
from rtgrid.engines.report.pdf_report import standard_plan_pdf
from rtgrid.engines.report.plan_report import render_dose_wash_png, render_dvh_png
from rtgrid.protos.grid_contract import Artifact, BeamDij, BeamDijCall, PlanOptimizeCall, PlanOptimizeResult, PlanSetup, PlanSetupCall

from .files import dataset_bytes

def structures_on_ct(series: ImageSeries, rtstructs: list[bytes]) -> dict[str, np.ndarray]:
    """Masks on the CT grid from RTSTRUCTs; a later structure set wins over an earlier one."""
    masks: dict[str, np.ndarray] = {}
    for data in rtstructs:
        ds = pydicom.dcmread(io.BytesIO(data))
        masks.update(read_rtstruct(ds, series.volume, frame_of_reference_uid=series.frame_of_reference_uid))
    return masks


def setup_grid(setup: PlanSetup) -> Volume:
    """The set-up's relative electron density as a volume on the dose grid (LPS, mm)."""
    return Volume(setup.density, np.asarray(setup.origin_mm), np.asarray(setup.spacing_mm), np.asarray(setup.direction))


def _bixels(setup: PlanSetup, b: int) -> BixelGrid:
    beam = Beam(setup.gantry_deg[b], 0.0, 0.0, np.asarray(setup.isocenter_mm))
    ix, iy = setup.bixels[b]
    return BixelGrid(beam, setup.bixel_mm, setup.sad_mm, ix, iy)


def plan_setup(call: PlanSetupCall) -> dict[str, Any]:
    """Density and structures on the dose grid, beams at the target's centroid, their bixels."""
    masks = structures_on_ct(call.series, call.rtstructs)
    order = load_order(call.order_text, masks)
    machine = load_machine(call.machine_id)
    ct = call.series.volume
    density = ct.with_voxels(hu_to_relative_electron_density(ct.voxels))
    grid = resample_to_dose_grid(density, call.dose_grid_mm)
    names = sorted(set(order.structures) | {call.body})
    dose_masks = {name: resample_mask(masks[name], density, grid) for name in names}
    covered = targets_mask(order, dose_masks)  # beams cover every prescription level's target
    isocenter = default_isocenter(covered, grid)
    bixels = [make_bixel_grid(Beam(float(gantry), 0.0, 0.0, isocenter), covered, grid, machine, call.bixel_mm)
              for gantry in call.gantry_angles_deg]
    return PlanSetup(
        density=grid.voxels.astype(np.float32), origin_mm=grid.origin_mm.tolist(), spacing_mm=grid.spacing_mm.tolist(),
        direction=grid.direction.tolist(), masks=dose_masks, isocenter_mm=isocenter.tolist(),
        gantry_deg=list(map(float, call.gantry_angles_deg)), bixel_mm=call.bixel_mm, sad_mm=machine.sad_mm,
        body=call.body,
        # The structure set the plan is made on (the last one wins on equal names).
        rtstruct_uid=str(pydicom.dcmread(io.BytesIO(call.rtstructs[-1]), stop_before_pixels=True).SOPInstanceUID),
        bixels=[(b.ix, b.iy) for b in bixels],
    ).to_result()


def beam_dij(call: BeamDijCall) -> dict[str, Any]:
    """The dose influence matrix of one beam (CSR parts), rows over the whole dose grid."""
    setup = PlanSetup.from_result(call.setup)
    bixels = _bixels(setup, call.beam_index)
    dij = compute_beam_dij(setup_grid(setup), setup.masks[setup.body], bixels.beam, bixels, load_machine(call.machine_id))
    return BeamDij(dij.data, dij.indices, dij.indptr, list(dij.shape), call.beam_index).to_result()


def plan_optimize(call: PlanOptimizeCall) -> dict[str, Any]:
    """Optimize, normalize, and write RTDOSE, the standard plan, a report and its pictures.

    An order with ``goals: predicted`` first predicts the patient's dose with the built-in model
    ``call.dose_model`` (``NAME@VERSION:SHA256``, recorded by the master), and the optimizer mimics
    it (its voxels and DVHs) beside the order's goals; ``RD.predicted.dcm`` is published with the plan.
    """
    setup = PlanSetup.from_result(call.setup)
    series, rtstructs = call.series, call.rtstructs
    grid = setup_grid(setup)
    masks = setup.masks
    order = load_order(call.order_text, masks)
    machine = load_machine(call.machine_id)
    ct_masks = structures_on_ct(series, rtstructs)
    reference, predicted_files, prediction = None, [], {}
    if order.goals == "predicted":
        # Imported here: the predict executor imports this module, and plans without prediction
        # need no dose model.
        from .predict import predicted_dose_on_ct

        predicted, card, sha256 = predicted_dose_on_ct(series, ct_masks, order, setup.body, call.dose_model)
        reference = resample_dose(predicted, series.volume, grid)
        predicted_ds = write_rtdose(predicted, series.volume, series, referenced_rtplan_uid=generate_uid(),
                                    comment="predicted dose, the goals of the plan")
        predicted_ds.SeriesDescription = f"predicted dose {card['name']}@{card['version']} {sha256[:12]}"[:64]
        predicted_files = [("RD.predicted.dcm", "rtdose", "RTDOSE", dataset_bytes(predicted_ds))]
        prediction = {"model": f"{card['name']}@{card['version']}", "sha256": sha256,
                      "mean_dose_gy": {name: float(reference[mask].mean()) for name, mask in masks.items() if mask.any()}}
    per_beam = [sp.csr_matrix((b.data, b.indices, b.indptr), shape=tuple(b.shape))
                for b in sorted(map(BeamDij.from_result, call.beams), key=lambda b: b.beam_index)]
    bixels = [_bixels(setup, b) for b in range(len(per_beam))]
    dij = assemble_dij(per_beam, release=True)
    final = optimize_on_full_kernel(dij, masks, order, grid, masks[setup.body], bixels, machine,
                                    reference_dose_gy=reference)
    fluence, weights, dose = final.fluence, final.weights, final.dose_gy
    voxel_cc = grid.voxel_volume_mm3 / 1000.0
    goals = list(final.goals)  # the order's goals on the final dose, levels first
    acceptance = judge_standard_plan(order, goals, dose, masks[setup.body])
    metrics = plan_metrics(dose, masks, voxel_cc, dose_levels_gy=tuple(level.dose_gy for level in order.levels))
    plan_uid = generate_uid()
    rtdose = write_rtdose(dose, grid, series, referenced_rtplan_uid=plan_uid,
                          comment="rtgrid standard plan (pencil beam)")
    standard_plan = StandardPlan.from_optimization(machine, tuple(bixels), weights, grid, dose, order,
                                                   setup.body)
    report = {
        "release": acceptance.to_json_dict(),  # first: a failed plan says so before anything else
        "normalization": {"target": order.prescription.target, "volume_pct": order.prescription.normalization_volume_pct,
                          "dose_gy": order.prescription.dose_gy},
        "levels": [{"target": level.target, "dose_gy": level.dose_gy, "fractions": level.fractions,
                    **{f"D{v}": dose_at_volume(dose[masks[level.target]].astype(np.float64), float(v))
                       for v in (99, 95, 1)}}
                   for level in order.levels],
        "goals_from": order.goals,  # "order", or "predicted": the predicted dose was mimicked too
        **({"predicted": prediction} if prediction else {}),
        "goals": [{"goal": g.goal, "structure": g.structure, "achieved_gy": g.achieved_gy, "limit_gy": g.limit_gy,
                   "met": g.met} for g in goals],
        "all_goals_met": all(g.met for g in goals), "metrics": metrics,
        "optimizer": {"solver": fluence.solver, "iterations": fluence.iterations, "time_s": fluence.time_s,
                      "message": fluence.message, "normalization_factor": fluence.normalization_factor,
                      "far_scatter_correction_rounds": final.correction_rounds,
                      "goal_rounds": final.goal_rounds,
                      # the best trade-off's misses: infeasible with these beams, or traded away
                      "unmet_goals": [{"goal": g.goal, "achieved_gy": g.achieved_gy, "limit_gy": g.limit_gy,
                                       "miss_gy": abs(g.achieved_gy - g.limit_gy)} for g in final.unmet_goals],
                      "optimization_s": final.optimization_s, "final_dose_s": final.final_dose_s,
                      "dose_of_the_matrix_vs_final_max_gy": float(np.abs(fluence.dose_gy.reshape(grid.shape)
                                                                         - dose).max())},
        "dose_influence": {"voxels": int(dij.shape[0]), "bixels": int(dij.shape[1]), "nnz": int(dij.nnz)},
        "machine": {"id": machine.id, "version": machine.version, "content_hash": machine.content_hash},
        "plan_uid": plan_uid, "rtdose_sop_instance_uid": rtdose.SOPInstanceUID,
        "beams": [{"gantry_deg": g.beam.gantry_deg, "isocenter_mm": g.beam.isocenter_mm.tolist(),
                   "bixels": g.n_bixels} for g in bixels],
    }
    dvhs = {name: cumulative_dvh(dose, mask, voxel_cc) for name, mask in masks.items()}
    dvh_png = render_dvh_png({n: (d.dose_gy, d.volume_pct) for n, d in dvhs.items()}, title="Standard plan DVH")
    wash_png = render_dose_wash_png(series.volume, dose, grid, ct_masks,
                                    prescription_gy=order.prescription.dose_gy)
    # A failed plan leaves its report and pictures for review, and no dose or plan to import or convert.
    released = [("RD.standard.dcm", "rtdose", "RTDOSE", dataset_bytes(rtdose)),
                ("RP.standard.dcm", "rtplan", "RTPLAN", dataset_bytes(standard_rtplan(
                    standard_plan, grid, masks, series, setup.rtstruct_uid, plan_uid))),
                ("standard-plan.npz", "standard_plan", "", standard_plan.to_bytes())] if acceptance.released else []
    files = [
        *released,
        *predicted_files,
        ("plan-report.json", "report", "", json.dumps(report, indent=2).encode()),
        ("dvh.png", "image", "", dvh_png),
        ("dose-wash.png", "image", "", wash_png),
        ("report.pdf", "report_pdf", "", standard_plan_pdf(series, rtstructs, order, report, dvh_png, wash_png)),
    ]
    return PlanOptimizeResult(acceptance.released, list(acceptance.reasons), tuple(Artifact(*f) for f in files)).to_result()
