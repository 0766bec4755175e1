"""Job kind ``contour``: classical auto-contouring split into z-slabs, deep models split into slice
batches, merged into one RTSTRUCT.

Stages
------
``contour``
    One shard per slab (``engines.segmentation.classical.plan_slabs``); each reads its slab of
    the CT plus a halo and returns the structures of its own slices.
``segment`` (only with ``models``)
    One shard per model and batch of slices; each runs on the agent's warm actor of that model
    and returns a uint8 label slab. These shards want a GPU agent.
``merge``
    One shard: global steps (3-D components, left/right), post-processing of each model's label
    map as its card says, the RTSTRUCT referencing the uploaded CT, PNG overlays and a JSON
    summary. These become the job's artifacts.

Parameters
----------
(Typed, with their defaults and ranges, in ``rtgrid.master.jobs.params``.)

``shards``
    Number of classical slabs, 1 to 64 (default: one per 16 slices).
``models``
    ``NAME`` or ``NAME@VERSION``, comma-separated: registered segmentation models. Resolved at
    submission to the exact packages (stored as ``NAME@VERSION:SHA256``), so a job always names
    the weights that made its contours. A model whose card declares a body region the CT does
    not cover (``engines.segmentation.deep.region``) is dropped at submission and listed, with
    the reason, under the internal parameter ``models_skipped`` (JSON); the job's first shard
    announces it as an event and the merge's ``contours.json`` reports it. A mandible drawn in
    an abdomen must never reach a planning system.
``assist``
    What the user drew or pointed at (JSON; see ``rtgrid.master.jobs.assist``): completed in
    the merge and written beside the drawn structure, marked as machine-completed.
"""

from __future__ import annotations

import json

from rtgrid.engines.segmentation.classical import plan_slabs
from rtgrid.engines.segmentation.deep.inference import plan_slice_batches
from rtgrid.engines.segmentation.deep.region import UnknownRegionError, check_region
from rtgrid.protos.grid_contract import ContourMergeCall, ContourSegmentCall, ContourSlabCall, SegmentResult

from .. import models
from ..blobs import BlobStore
from ..codec import volume_from_bytes
from ..errors import FailedPrecondition, InvalidArgument
from ..store.base import Store
from ..store.records import JobRecord, ShardRecord
from .assist import check_assist
from .base import JobContext, JobKind, ShardCall, ShardResources, StagePlan
from .params import ContourParams, parse_contour_params

# Slices per segmentation shard: large enough to batch well on a GPU, small enough to spread.
SEGMENT_SLICES_PER_SHARD = 32
MAX_MODELS_PER_JOB = 8


def model_hashes(params: dict[str, str]) -> list[str]:
    """The package hashes of a validated job's ``models`` parameter, in order."""
    return parse_contour_params(params).model_hashes


def resolve_models(store: Store, spec: str) -> str:
    """``NAME[@VERSION],...`` to ``NAME@VERSION:SHA256,...`` (duplicates dropped).

    Raises
    ------
    NotFound
        A model is not registered (named in the message).
    InvalidArgument
        The list is empty or too long.
    """
    names = [item.strip() for item in spec.split(",") if item.strip()]
    if not names:
        raise InvalidArgument("parameter models is empty; give NAME or NAME@VERSION, comma-separated")
    if len(names) > MAX_MODELS_PER_JOB:
        raise InvalidArgument(f"parameter models names {len(names)} models; at most {MAX_MODELS_PER_JOB}")
    resolved: list[str] = []
    for name in names:
        record = models.resolve(store, name)
        item = f"{record.name}@{record.version}:{record.sha256}"
        if item not in resolved:
            resolved.append(item)
    return ",".join(resolved)


def split_by_region(store: Store, blobs: BlobStore, case_id: str, resolved: str) -> tuple[str, list[dict[str, str]]]:
    """Keep the resolved models whose body region the case's CT covers; list the others with why.

    Returns
    -------
    (str, list of dict)
        The kept ``NAME@VERSION:SHA256,...`` (possibly empty) and ``{"model", "reason"}`` per skipped model.

    Raises
    ------
    InvalidArgument
        A card declares a region rtgrid cannot check.
    FailedPrecondition
        The case has no committed image series.
    """
    kept, skipped = [], []
    volume = None
    for item in resolved.split(","):
        record = models.get(store, item.rpartition(":")[2])
        region = models.card_of(record).body_region
        if not region:
            kept.append(item)
            continue
        if volume is None:
            series = store.list_series(case_id)
            if not series:
                raise FailedPrecondition(f"case {case_id} has no committed image series")
            volume = volume_from_bytes(blobs.read_bytes(series[0].volume_sha256))
        try:
            check = check_region(volume, region)
        except UnknownRegionError as exc:
            raise InvalidArgument(f"model {record.name}@{record.version}: {exc}") from None
        if check.covered:
            kept.append(item)
        else:
            skipped.append({"model": f"{record.name}@{record.version}", "sha256": record.sha256,
                            "reason": f"skipped: its body region is {region}, and {check.reason}"})
    return ",".join(kept), skipped


class ContourJob(JobKind):
    name = "contour"
    stages = ("contour", "merge")

    def job_params(self, params: dict[str, str]) -> ContourParams:
        """A stored job's parameters, typed (a ``full`` job's contour stages read theirs from its own)."""
        return parse_contour_params(params)

    def stages_for(self, params: dict[str, str]) -> tuple[str, ...]:
        return ("contour", "segment", "merge") if self.job_params(params).models else self.stages

    def validate(self, params: dict[str, str], store: Store, blobs: BlobStore, case_id: str) -> dict[str, str]:
        parse_contour_params(params, submitted=True)  # unknown parameters, shards
        params = dict(params)
        if "models" in params:
            kept, skipped = split_by_region(store, blobs, case_id, resolve_models(store, params["models"]))
            params.pop("models")
            if kept:
                params["models"] = kept
            if skipped:
                params["models_skipped"] = json.dumps(skipped, sort_keys=True)
        if "assist" in params:
            check_assist(params["assist"], store, case_id)
        return params

    def wants_gpu(self, job: JobRecord, shard: ShardRecord) -> bool:
        return shard.stage == "segment"

    def prepare_shard(self, ctx: JobContext, shard: ShardRecord) -> str:
        # Announced once, as the job's first shard starts: which models the CT's anatomy ruled out.
        if shard.stage != "contour" or shard.index != 0 or shard.attempts > 1:
            return ""
        return "; ".join(f"model {m['model']} {m['reason']}" for m in self.job_params(ctx.job.params).models_skipped)

    def _slabs(self, ctx: JobContext):
        nz = ctx.series_record.n_slices
        return plan_slabs(nz, self.job_params(ctx.job.params).slab_count(nz))

    def _batches(self, ctx: JobContext) -> list[tuple[int, int]]:
        return plan_slice_batches(ctx.series_record.n_slices, SEGMENT_SLICES_PER_SHARD)

    def plan_stage(self, ctx: JobContext, stage: str) -> StagePlan:
        if stage == "contour":
            return StagePlan.count(len(self._slabs(ctx)))
        if stage == "segment":
            return StagePlan.count(len(self.job_params(ctx.job.params).model_hashes) * len(self._batches(ctx)))
        return StagePlan.count(1)

    def shard_call(self, ctx: JobContext, shard: ShardRecord) -> ShardCall:
        volume = ctx.volume
        params = self.job_params(ctx.job.params)
        if shard.stage == "contour":
            slab = self._slabs(ctx)[shard.index]
            return ShardCall.of(
                ContourSlabCall(volume.voxels[slab.halo_start : slab.halo_stop], volume.spacing_mm, volume.direction, slab),
                ShardResources(cpus=1.0, memory_mb=1024),
            )
        if shard.stage == "segment":
            batches = self._batches(ctx)
            sha256 = params.model_hashes[shard.index // len(batches)]
            start, stop = batches[shard.index % len(batches)]
            return ShardCall.of(
                ContourSegmentCall(volume.voxels[start:stop], volume.spacing_mm, volume.direction),
                ShardResources(cpus=1.0, memory_mb=2048, model=sha256),
            )
        return ShardCall.of(
            ContourMergeCall(ctx.stage_results("contour"), ctx.series, self._model_results(ctx, params),
                             json.loads(params.assist or "null"), list(params.models_skipped)),
            ShardResources(cpus=1.0, memory_mb=4096),
        )

    def _model_results(self, ctx: JobContext, params: ContourParams) -> list[dict]:
        """Per model: its card and registry identity, and its label slabs in slice order."""
        hashes = params.model_hashes
        if not hashes:
            return []
        results = [SegmentResult.from_result(r) for r in ctx.stage_results("segment")]
        per_model = len(results) // len(hashes)
        out = []
        for position, sha256 in enumerate(hashes):
            record = models.get(ctx.store, sha256)
            mine = results[position * per_model : (position + 1) * per_model]
            out.append({"name": record.name, "version": record.version, "sha256": sha256, "card_json": record.card_json,
                        "labels": [r.labels for r in mine], "actors": [r.actor for r in mine]})
        return out
