"""The standard plan as an RT Plan, on the standard machine model, so that ``RD.standard.dcm``
references an object that exists.

The standard plan is an ideal fluence on the standard machine (not a linac in any bunker): each
beam's bixel fluence is averaged onto the standard MLC's leaf pairs (as a reused fluence is for a
device, :func:`~.leaf_grid.resample_fluence`) and sequenced into step-and-shoot segments
(:func:`~.sequencing.sequence_beam`, ``STANDARD_LEVELS`` intensity levels, MU per fraction).
Every beam's Treatment Machine Name is ``STANDARD_MACHINE_NAME`` and its Manufacturer's Model
Name the standard machine's id, so that no planning system mistakes the plan for a deliverable
one: device plans (``RP.<device>.dcm``) are those.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from pydicom.dataset import Dataset

from rtgrid.engines.dicomrt.rtplan import PlanBeam, PlanData, step_and_shoot_control_points, write_rtplan
from rtgrid.engines.dose.machine import load_machine
from rtgrid.engines.errors import EngineError
from rtgrid.engines.imaging.volume import ImageSeries, Volume
from rtgrid.engines.optimization.dvh import targets_mask

from .device import DeviceModel
from .leaf_grid import device_leaf_grid, resample_fluence
from .sequencing import sequence_beam
from .standard_plan import StandardPlan

STANDARD_MACHINE_NAME = "RTGRID-STANDARD"
"""Treatment Machine Name (SH, 16 characters at most) of the standard plan's beams."""
STANDARD_LEVELS = 20
"""Intensity levels the fluence is sequenced to (one level: 5 % of the beam's peak)."""
PLAN_LABEL = "STANDARD"


class StandardRtPlanError(EngineError, ValueError):
    """The standard plan cannot be written as an RT Plan (machine model changed)."""


def standard_device(plan: StandardPlan) -> DeviceModel:
    """The standard machine as a device without delivery limits: it is a reference, not a linac."""
    machine = load_machine(plan.machine_id)
    if machine.content_hash != plan.machine_hash:
        raise StandardRtPlanError(f"machine {machine.id} (sha256 {machine.content_hash[:12]}) is not the model the "
                                  f"plan was made with (sha256 {plan.machine_hash[:12]})")
    return DeviceModel(machine=machine, manufacturer="rtgrid", model="standard machine model",
                       mlc_model=f"{machine.n_pairs}-pair reference MLC", x_jaws=True, leaf_overtravel_mm=200.0,
                       min_segment_mu=1e-6, max_mu_per_beam=float("inf"), max_segments_per_beam=10_000)


def standard_rtplan(plan: StandardPlan, density: Volume, masks: Mapping[str, np.ndarray], series: ImageSeries,
                    rtstruct_uid: str, sop_instance_uid: str, n_levels: int = STANDARD_LEVELS) -> Dataset:
    """The standard plan as an RT Plan with step-and-shoot beams on the standard machine.

    Parameters
    ----------
    plan : StandardPlan
    density : Volume
        The plan's dose grid (LPS, mm); only its geometry is used.
    masks : Mapping[str, np.ndarray]
        Structure masks on the dose grid, every target of the order included.
    series : ImageSeries
        The CT the plan was made on (patient, study, Frame of Reference).
    rtstruct_uid : str
        SOP Instance UID of the structure set the plan was made on.
    sop_instance_uid : str
        The plan's UID: the one ``RD.standard.dcm`` already references.
    n_levels : int
        Intensity levels of the sequencer.

    Returns
    -------
    pydicom.Dataset
        The RT Plan.

    Raises
    ------
    StandardRtPlanError
        The standard machine's file is no longer the one the plan was made with.
    """
    device = standard_device(plan)
    rx = plan.order.prescription
    targets = targets_mask(plan.order, masks)
    beams = []
    for n, (beam, bixels, weights) in enumerate(zip(plan.beams, plan.bixels, plan.weights)):
        grid, _ = device_leaf_grid(beam, targets, density, device, column_mm=float(bixels.bixel_mm))
        resampled, _ = resample_fluence(bixels, np.asarray(weights, dtype=np.float64), grid)
        # Weights are MU-equivalent over all fractions (1 cGy/MU reference calibration).
        segments = sequence_beam(grid.to_map(resampled) / rx.fractions, grid, device, n_levels=n_levels)
        cps, meterset = step_and_shoot_control_points(
            [np.stack([s.leaf_x1_mm, s.leaf_x2_mm]) for s in segments],
            [s.jaw_x_mm for s in segments], [s.jaw_y_mm for s in segments], [s.mu for s in segments],
        )
        beams.append(PlanBeam(f"G{beam.gantry_deg:03.0f}", n + 1, beam.gantry_deg, beam.collimator_deg,
                              beam.couch_deg, tuple(beam.isocenter_mm), cps, meterset, kind="DYNAMIC"))
    data = PlanData(label=PLAN_LABEL, machine_name=STANDARD_MACHINE_NAME,
                    leaf_boundaries_mm=tuple(device.leaf_boundaries_mm), beams=tuple(beams),
                    prescription_gy=rx.dose_gy, fractions=rx.fractions, referenced_rtstruct_uid=rtstruct_uid,
                    sad_mm=device.machine.sad_mm, machine_model_id=device.machine.id)
    return write_rtplan(data, series, sop_instance_uid=sop_instance_uid)
