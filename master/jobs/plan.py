"""Job kinds ``plan`` and ``full``: a standard plan on the standard machine model.

Stages
------
``setup``
    One shard: structures from the case's RTSTRUCTs, density and masks on the dose grid, beams at
    the target's centroid and their bixels.
``dose``
    One shard per beam: that beam's dose influence matrix (beams spread over agents).
``optimize``
    One shard: fluence optimization against the medical order, normalization, RTDOSE, the
    standard plan, the plan report and its pictures.

``full`` runs the contour job's stages first and plans on its structures together with any
RTSTRUCT uploaded with the CT (an uploaded structure wins over an automatic one of the same name).

Parameters (strings, as they travel)
------------------------------------
Typed, with their defaults and ranges, in ``rtgrid.master.jobs.params``.

``order``          the medical order (YAML or JSON text; ``engines/optimization/ORDER.md``)
``beams``          number of equispaced coplanar beams, 1 to 36 (default 9), or
``gantry_angles``  comma-separated gantry angles in degrees (IEC 61217), 1 to 36 in [0, 360)
``bixel_mm``       bixel size at the isocenter, 2 to 20 mm (default 5)
``dose_grid_mm``   dose grid spacing, 1 to 10 mm (default 3)
``machine``        machine model id (default the standard 6 MV machine)
``contours_job``   (``plan`` only) a finished contour job whose RTSTRUCT to use, or a finished
                   register job whose ``RS.*.mapped.dcm`` (contours drawn on an MR/PET, mapped
                   onto the CT) to use
``contours_version`` (``plan`` only) which version of that job's contours (``rtgrid versions``);
                   default the latest approved, else the latest not rejected; kept with the job
``plan_job``       (``plan`` only) a finished plan or full job of this case: only its ``convert``
                   stage runs, on that job's set-up and standard plan, for ``devices`` (the way an
                   approved plan goes to devices when ``rtgrid up --require-approval``)
``body``           the outline structure that gets dose (default ``BODY``)
``shards``         (``full`` only) z-slabs of the contour stage, 1 to 64
``devices``        device ids (``ID,ID``), ``auto`` or ``auto:N``: adds the ``convert`` stage,
                   one shard per device: conversion, RTPLAN, independent QA, release on pass
``dose_model``     (set by the master) the dose model of an order with ``goals: predicted``
``device_rule``    how ``auto`` chooses: ``congestion`` (idle first, then shortest queue; default),
                   ``shortest_queue``, or ``prefer:ID,ID`` (those first when usable)
"""

from __future__ import annotations

import io

import pydicom

from rtgrid.engines.dicomrt.rtstruct import RoiInfo, read_rtstruct_rois
from rtgrid.engines.dose_prediction.inputs import N_LEVELS
from rtgrid.engines.errors import EngineError
from rtgrid.engines.optimization.order import load_order
from rtgrid.engines.segmentation.classical import STRUCTURE_NAMES
from rtgrid.protos.grid_contract import (
    BeamDijCall,
    ConvertDeviceCall,
    DevicePlanResult,
    PlanOptimizeCall,
    PlanOptimizeResult,
    PlanSetup,
    PlanSetupCall,
)

from ..approval import contours_for_plan
from ..blobs import BlobStore
from ..errors import FailedPrecondition, InvalidArgument
from ..intake import case_rtstructs
from ..store.base import Store
from ..devices import resolve_devices, reroute
from ..store.records import DOWN, SUCCEEDED, JobRecord, ShardRecord
from .base import JobContext, JobKind, ShardCall, ShardResources, StagePlan
from .contour import ContourJob
from .params import ContourParams, PlanParams, parse_plan_params


def _rtstruct_rois(data: bytes) -> list[RoiInfo]:
    return read_rtstruct_rois(pydicom.dcmread(io.BytesIO(data)))


def _rtstruct_names(data: bytes) -> set[str]:
    return {roi.name for roi in _rtstruct_rois(data)}


def _case_frame_of_reference(store: Store, case_id: str) -> str:
    series = store.list_series(case_id)
    if not series:
        raise FailedPrecondition(f"case {case_id} has no committed CT series")
    return series[0].frame_of_reference_uid


def check_contours_on_case(store: Store, case_id: str, data: bytes, what: str) -> None:
    """Refuse an RTSTRUCT with structures off the case's CT frame of reference.

    Raises
    ------
    InvalidArgument
        Naming the foreign frames of reference and the case's.
    """
    frame = _case_frame_of_reference(store, case_id)
    try:
        rois = _rtstruct_rois(data)
    except EngineError as exc:
        raise InvalidArgument(f"{what}: {exc}") from None
    elsewhere = {r.frame_of_reference_uid for r in rois} - {frame}
    if elsewhere:
        raise InvalidArgument(
            f"{what} holds structures on frame of reference {', '.join(sorted(elsewhere))}, "
            f"not on case {case_id}'s CT frame of reference {frame}"
        )


# Job kinds whose RTSTRUCT a plan may name as contours_job (register: MR/PET contours mapped to the CT).
CONTOUR_SOURCES = ("contour", "register")
# What a conversion of an earlier plan (plan_job) is given; the rest comes from that plan.
CONVERSION_PARAMS = frozenset({"plan_job", "devices", "device_rule"})


def _hospital(store: Store, case_id: str) -> str:
    """The hospital that owns the case (its devices, and the grid's shared ones, are the job's)."""
    case = store.get_case(case_id)
    if case is None:
        raise FailedPrecondition(f"case {case_id} no longer exists")
    return case.hospital


class PlanJob(JobKind):
    name = "plan"
    stages = ("setup", "dose", "optimize")

    def job_params(self, params: dict[str, str]) -> PlanParams:
        """A stored job's parameters, typed."""
        return parse_plan_params(params, self.name)

    def stages_for(self, params: dict[str, str]) -> tuple[str, ...]:
        typed = self.job_params(params)
        if typed.plan_job:
            return ("convert",)
        return self.stages + (("convert",) if typed.devices else ())

    # a conversion of an earlier plan (plan_job)
    def source_plan(self, store: Store, case_id: str, job_id: str) -> JobRecord:
        """The finished plan whose set-up and standard plan a ``plan_job`` conversion uses: of this
        case only, checked at submission and whenever a shard reads it.

        Raises
        ------
        InvalidArgument
            Not a finished plan or full job, or one of another case.
        """
        job = store.get_job(job_id)
        if job is None or job.kind not in ("plan", "full") or job.state != SUCCEEDED:
            raise InvalidArgument(f"plan_job={job_id!r} is not a finished plan or full job")
        if job.case_id != case_id:
            raise InvalidArgument(f"plan_job={job_id!r} planned case {job.case_id}, not case {case_id}: "
                                  "a conversion uses only its own case's plan")
        return job

    def _validate_conversion(self, params: dict[str, str], store: Store, case_id: str) -> dict[str, str]:
        """A ``plan_job`` conversion takes the plan as it was made: its order, machine and outline."""
        extra = set(params) - CONVERSION_PARAMS
        if extra:
            raise InvalidArgument(f"plan_job converts that plan as it was made: drop {', '.join(sorted(extra))}")
        if not params.get("devices"):
            raise InvalidArgument("plan_job converts a plan for devices: give devices=ID,ID (or auto, auto:N)")
        source = self.source_plan(store, case_id, params["plan_job"])
        stored = {**{k: source.params[k] for k in ("order", "machine", "body") if k in source.params}, **params}
        typed = parse_plan_params(stored, self.name, submitted=True)
        resolve_devices(store, typed.devices, _hospital(store, case_id), typed.device_rule)
        return stored

    def _made_in(self, ctx: JobContext) -> JobContext:
        """The job whose set-up and standard plan the later stages use: this one, or ``plan_job``'s."""
        plan_job = self.job_params(ctx.job.params).plan_job
        if not plan_job:
            return ctx
        return JobContext(ctx.store, ctx.blobs, self.source_plan(ctx.store, ctx.job.case_id, plan_job))

    # inputs
    def uploaded_rtstructs(self, store: Store, blobs: BlobStore, case_id: str) -> list[bytes]:
        """The RTSTRUCTs uploaded on the CT (those drawn on an MR/PET reach a plan through a register job)."""
        return case_rtstructs(store, blobs, case_id, _case_frame_of_reference(store, case_id))

    def earlier_rtstructs(self, store: Store, blobs: BlobStore, case_id: str, params: dict[str, str]) -> list[bytes]:
        """The RTSTRUCT of the contour or register job named in ``contours_job``, if any: of this
        case only (a register job's are the MR/PET contours it mapped onto the CT).

        Checked at submission and again whenever a stage reads them, so that one patient's contours
        can never reach another patient's plan.
        """
        job_id = params.get("contours_job")
        if not job_id:
            return []
        job = store.get_job(job_id)
        if job is None or job.kind not in CONTOUR_SOURCES or job.state != SUCCEEDED:
            raise InvalidArgument(f"contours_job={job_id!r} is not a finished contour or register job")
        if job.case_id != case_id:
            raise InvalidArgument(
                f"contours_job={job_id!r} contoured case {job.case_id}, not case {case_id}: "
                "a plan uses only its own case's contours"
            )
        # Checked with the other parameters at submission; here only the number is needed.
        chosen, _ = contours_for_plan(store, job_id, int(params.get("contours_version") or 0))
        rtstructs = [blobs.read_bytes(a.sha256) for a in chosen]
        if not rtstructs:
            raise InvalidArgument(
                f"contours_job={job_id!r} published no structure set (a register job maps only RTSTRUCTs "
                "uploaded on its MR/PET series)")
        for data in rtstructs:
            check_contours_on_case(store, case_id, data, f"contours_job={job_id!r}")
        return rtstructs

    def structure_names(self, store: Store, blobs: BlobStore, case_id: str, params: dict[str, str]) -> set[str]:
        rtstructs = self.earlier_rtstructs(store, blobs, case_id, params) + self.uploaded_rtstructs(store, blobs, case_id)
        if not rtstructs:
            raise FailedPrecondition(
                "a plan needs contours: upload an RTSTRUCT with the CT, name a finished contour job "
                "(contours_job=JOB_ID), or submit kind 'full'"
            )
        return set().union(*(_rtstruct_names(r) for r in rtstructs))

    def validate(self, params: dict[str, str], store: Store, blobs: BlobStore, case_id: str) -> dict[str, str]:
        if "plan_job" in params and self.name == "plan":
            return self._validate_conversion(params, store, case_id)
        typed = parse_plan_params(params, self.name, submitted=True)
        if typed.devices:
            resolve_devices(store, typed.devices, _hospital(store, case_id), typed.device_rule)
        names = self.structure_names(store, blobs, case_id, params)
        if typed.body not in names:
            raise InvalidArgument(
                f"the outline structure {typed.body!r} is not among the contours ({', '.join(sorted(names))})")
        try:
            order = load_order(typed.order, names)
        except EngineError as exc:
            raise InvalidArgument(f"medical order: {exc}") from None
        params = dict(params)
        if params.get("contours_job"):  # the version chosen now stays the plan's, whatever is approved later
            params["contours_version"] = str(contours_for_plan(store, params["contours_job"],
                                                               typed.contours_version)[1])
        elif typed.contours_version:
            raise InvalidArgument("contours_version names a version of the contours of contours_job=JOB_ID: "
                                  "give contours_job too")
        if order.goals == "predicted":
            # Imported here: the predict kind imports this module.
            from .predict import builtin_model_identity

            if len(order.levels) > N_LEVELS:
                raise InvalidArgument(f"goals: predicted takes at most {N_LEVELS} prescription levels "
                                      f"(the dose model's inputs); the order has {len(order.levels)}")
            params["dose_model"] = builtin_model_identity()  # the agent refuses other weights
        return params

    # stages
    def rtstructs(self, ctx: JobContext) -> list[bytes]:
        """Automatic contours first, uploaded ones last (they win on equal names)."""
        return self.earlier_rtstructs(ctx.store, ctx.blobs, ctx.job.case_id, ctx.job.params) + self.uploaded_rtstructs(
            ctx.store, ctx.blobs, ctx.job.case_id
        )

    def plan_stage(self, ctx: JobContext, stage: str) -> StagePlan:
        if stage == "convert":  # chosen now, by the congestion of this moment
            params = self.job_params(ctx.job.params)
            return StagePlan(tuple(resolve_devices(ctx.store, params.devices, _hospital(ctx.store, ctx.job.case_id),
                                                   params.device_rule)))
        return StagePlan.count(len(self.job_params(ctx.job.params).angles_deg) if stage == "dose" else 1)

    def prepare_shard(self, ctx: JobContext, shard: ShardRecord) -> str:
        """A conversion planned on a device that is now down goes to another usable device."""
        if shard.stage != "convert":
            return ""
        device = ctx.store.get_device(shard.target)
        if device is None or device.status != DOWN:
            return ""
        taken = {s.target for s in ctx.store.list_shards(ctx.job.job_id, "convert")}
        other = reroute(ctx.store, shard.target, taken, _hospital(ctx.store, ctx.job.case_id),
                        self.job_params(ctx.job.params).device_rule)
        if other is None:
            raise FailedPrecondition(f"device {shard.target} is down and no other device is usable")
        notice = f"device {shard.target} is down: its conversion is rerouted to {other}"
        shard.target = other
        return notice

    def outcome(self, ctx: JobContext, stage: str) -> str:
        """A standard plan that fails its release check fails the job at once (no device plan is
        built on it); device plans that failed QA fail the job, with their reasons (passing ones
        are released)."""
        if stage == "optimize":
            result = PlanOptimizeResult.from_result(ctx.stage_results("optimize")[0])
            if not result.plan_released:
                return ("standard plan FAILED its release check, nothing released (no RTDOSE, no device plans): "
                        + "; ".join(result.plan_reasons) + " (see plan-report.json)")
            return ""
        if stage != "convert":
            return ""
        failed = [r for r in map(DevicePlanResult.from_result, ctx.stage_results("convert")) if not r.qa_passed]
        return "; ".join(f"QA failed for {r.device}, nothing released for it: {', '.join(r.qa_reasons)}" for r in failed)

    def shard_call(self, ctx: JobContext, shard: ShardRecord) -> ShardCall:
        params, stage, index = self.job_params(ctx.job.params), shard.stage, shard.index
        machine = params.machine
        if stage == "setup":
            return ShardCall.of(PlanSetupCall(
                series=ctx.series, rtstructs=self.rtstructs(ctx), order_text=params.order, machine_id=machine,
                gantry_angles_deg=list(params.angles_deg), bixel_mm=params.bixel_mm, dose_grid_mm=params.dose_grid_mm,
                body=params.body,
            ), ShardResources(cpus=1.0, memory_mb=4096))
        # The set-up (density and masks on the dose grid) goes to every later shard: once into Ray's object store.
        made = self._made_in(ctx)
        setup = made.shared_result("setup")
        if stage == "convert":
            device = ctx.store.get_device(shard.target)
            if device is None:
                raise FailedPrecondition(f"device {shard.target} is no longer registered")
            return ShardCall.of(ConvertDeviceCall(
                setup=setup, standard_plan=made.stage_file("optimize", "standard-plan.npz"), series=ctx.shared_series(),
                device_name=device.device_id, model_id=device.model_id,
                rtstruct_uid=PlanSetup.from_result(made.stage_results("setup")[0]).rtstruct_uid,
            ), ShardResources(cpus=1.0, memory_mb=4096))
        if stage == "dose":
            return ShardCall.of(BeamDijCall(setup=setup, beam_index=index, machine_id=machine),
                                ShardResources(cpus=1.0, memory_mb=4096))
        return ShardCall.of(PlanOptimizeCall(
            setup=setup, beams=ctx.stage_results("dose"), series=ctx.series, rtstructs=self.rtstructs(ctx),
            order_text=params.order, machine_id=machine, dose_model=params.dose_model,
        ), ShardResources(cpus=1.0, memory_mb=8192))


class _FullContourStages(ContourJob):
    """The contour stages of a ``full`` job: their parameters come from the full job's."""

    def job_params(self, params: dict[str, str]) -> ContourParams:
        return parse_plan_params(params, "full").contour


class FullJob(PlanJob):
    """Contour, then plan on the automatic contours plus any uploaded RTSTRUCT."""

    name = "full"
    stages = ContourJob.stages + PlanJob.stages
    _contour = _FullContourStages()

    def earlier_rtstructs(self, store: Store, blobs: BlobStore, case_id: str, params: dict[str, str]) -> list[bytes]:
        return []

    def structure_names(self, store: Store, blobs: BlobStore, case_id: str, params: dict[str, str]) -> set[str]:
        uploaded = self.uploaded_rtstructs(store, blobs, case_id)
        return set(STRUCTURE_NAMES).union(*(_rtstruct_names(r) for r in uploaded))

    def rtstructs(self, ctx: JobContext) -> list[bytes]:
        auto = ctx.stage_file("merge", "RS.contours.dcm")
        return [auto] + self.uploaded_rtstructs(ctx.store, ctx.blobs, ctx.job.case_id)

    def plan_stage(self, ctx: JobContext, stage: str) -> StagePlan:
        if stage in ContourJob.stages:
            return self._contour.plan_stage(ctx, stage)
        return super().plan_stage(ctx, stage)

    def shard_call(self, ctx: JobContext, shard: ShardRecord) -> ShardCall:
        if shard.stage in ContourJob.stages:
            return self._contour.shard_call(ctx, shard)
        return super().shard_call(ctx, shard)
