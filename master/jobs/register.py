"""Job kind ``register``: the case's MR and PET series registered to its planning CT.

Stages
------
``register``
    One shard per moving series (its ``target`` is the series' id): rigid registration (SimpleITK,
    mutual information, multi-resolution) of that MR or PET to the CT, then a B-spline when
    ``deformable=true``. The shard publishes ``REG.<name>.dcm`` (Spatial Registration),
    ``DREG.<name>.dcm`` (Deformable Spatial Registration, when deformable), ``fused.<name>.png`` and
    ``registration.<name>.json`` (matrix, angles, translation, metric, time), where ``<name>`` is
    the modality (``MR``, ``PT``), numbered (``MR.2``) when the case holds several of one modality.
    When RTSTRUCTs drawn on that series' frame of reference were uploaded with the case, their ROIs
    are mapped onto the CT and published as ``RS.<name>.mapped.dcm`` (on the CT's frame), which a
    plan job takes as its contours with ``contours_job=<this job>``.

Parameters (strings, as they travel)
------------------------------------
``moving``      the series to register: a series id or a Series Instance UID, several separated by
                commas (a UID names every echo of a split multi-echo MR); default: every MR/PET series.
``deformable``  ``true`` or ``false`` (default): also the B-spline step.
"""

from __future__ import annotations

from rtgrid.engines.imaging.volume import ImageSeries
from rtgrid.protos.grid_contract import RegisterSeriesCall

from ..blobs import BlobStore
from ..codec import series_from_bytes, volume_from_bytes
from ..errors import FailedPrecondition, InvalidArgument
from ..intake import case_rtstructs
from ..store.base import Store
from ..store.records import SECONDARY_SERIES, SeriesRecord, ShardRecord
from .base import JobContext, JobKind, ShardCall, ShardResources, StagePlan

REGISTER_PARAMS = frozenset({"moving", "deformable"})
_BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def moving_series(store: Store, case_id: str, moving: str = "") -> list[SeriesRecord]:
    """The case's MR/PET series that ``moving`` names (all of them when empty), in the store's order.

    Raises
    ------
    FailedPrecondition
        The case holds no MR or PET series.
    InvalidArgument
        An entry of ``moving`` is neither the id nor the Series Instance UID of one of them.
    """
    secondary = [s for s in store.list_series(case_id) if s.role == SECONDARY_SERIES]
    if not secondary:
        raise FailedPrecondition(
            f"case {case_id} holds no MR or PET series to register to its CT: upload them with the CT")
    wanted = [item.strip() for item in moving.split(",") if item.strip()]
    if not wanted:
        return secondary
    chosen: list[SeriesRecord] = []
    for item in wanted:
        found = [s for s in secondary if item in (s.series_id, s.series_instance_uid)]
        if not found:
            known = ", ".join(f"{s.series_id} ({s.modality} {s.series_instance_uid})" for s in secondary[:6])
            raise InvalidArgument(f"moving={item!r} is not an MR or PET series of case {case_id}; its series: {known}")
        chosen.extend(s for s in found if s not in chosen)
    return chosen


def parse_deformable(value: str) -> bool:
    """``deformable``'s value as a bool.

    Raises
    ------
    InvalidArgument
        Not one of true/false/yes/no/1/0.
    """
    try:
        return _BOOLEANS[value.strip().lower()]
    except KeyError:
        raise InvalidArgument(f"parameter deformable={value!r} must be true or false") from None


def file_stems(records: list[SeriesRecord]) -> dict[str, str]:
    """The stem of each series' published files by series id: its modality, numbered from the
    second series of one modality on (``MR``, ``MR.2`` ...), so a job's file names never collide."""
    counts: dict[str, int] = {}
    stems: dict[str, str] = {}
    for record in records:
        counts[record.modality] = counts.get(record.modality, 0) + 1
        n = counts[record.modality]
        stems[record.series_id] = record.modality if n == 1 else f"{record.modality}.{n}"
    return stems


class RegisterJob(JobKind):
    name = "register"
    stages = ("register",)

    def validate(self, params: dict[str, str], store: Store, blobs: BlobStore, case_id: str) -> dict[str, str]:
        unknown = set(params) - REGISTER_PARAMS
        if unknown:
            raise InvalidArgument(
                f"unknown parameter(s) for a register job: {', '.join(sorted(unknown))}; "
                f"known: {', '.join(sorted(REGISTER_PARAMS))}")
        deformable = parse_deformable(params.get("deformable", "false"))
        moving_series(store, case_id, params.get("moving", ""))
        return {**params, "deformable": "true" if deformable else "false"}

    def _chosen(self, ctx: JobContext) -> list[SeriesRecord]:
        return moving_series(ctx.store, ctx.job.case_id, ctx.job.params.get("moving", ""))

    def plan_stage(self, ctx: JobContext, stage: str) -> StagePlan:
        return StagePlan(tuple(s.series_id for s in self._chosen(ctx)))

    def shard_call(self, ctx: JobContext, shard: ShardRecord) -> ShardCall:
        all_secondary = moving_series(ctx.store, ctx.job.case_id)
        records = {s.series_id: s for s in all_secondary}
        if shard.target not in records:
            raise FailedPrecondition(
                f"series {shard.target} is no longer an MR or PET series of case {ctx.job.case_id}")
        record = records[shard.target]
        call = RegisterSeriesCall(
            fixed=ctx.shared_series(), moving=self._series(ctx, record), name=file_stems(all_secondary)[shard.target],
            deformable=parse_deformable(ctx.job.params.get("deformable", "false")),
            rtstructs=tuple(case_rtstructs(ctx.store, ctx.blobs, ctx.job.case_id, record.frame_of_reference_uid)),
        )
        return ShardCall.of(call, ShardResources(cpus=1.0, memory_mb=3072))

    @staticmethod
    def _series(ctx: JobContext, record: SeriesRecord) -> ImageSeries:
        volume = volume_from_bytes(ctx.blobs.read_bytes(record.volume_sha256))
        return series_from_bytes(ctx.blobs.read_bytes(record.meta_sha256), volume)
