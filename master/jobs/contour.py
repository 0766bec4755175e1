"""Job kind ``contour``: classical auto-contouring split into z-slabs, merged into one RTSTRUCT.

Stages
------
``contour``
    One shard per slab (``engines.segmentation.classical.plan_slabs``); each reads its slab of
    the CT plus a halo and returns the structures of its own slices.
``merge``
    One shard: global steps (3-D components, left/right), the RTSTRUCT referencing the uploaded
    CT, PNG overlays and a JSON summary. These become the job's artifacts.
"""

from __future__ import annotations

import math

from rtgrid.engines.segmentation.classical import plan_slabs

from ..blobs import BlobStore
from ..errors import InvalidArgument
from ..store.base import Store
from ..store.records import ShardRecord
from .base import JobContext, JobKind, ShardCall, ShardResources, StagePlan

SLICES_PER_SHARD = 16
MAX_SHARDS = 64


def int_param(params: dict[str, str], name: str, low: int, high: int) -> int | None:
    if name not in params:
        return None
    try:
        value = int(params[name])
    except ValueError:
        raise InvalidArgument(f"parameter {name}={params[name]!r} is not an integer") from None
    if not low <= value <= high:
        raise InvalidArgument(f"parameter {name}={value} is outside [{low}, {high}]")
    return value


class ContourJob(JobKind):
    name = "contour"
    stages = ("contour", "merge")

    def validate(self, params: dict[str, str], store: Store, blobs: BlobStore, case_id: str) -> dict[str, str]:
        unknown = set(params) - {"shards"}
        if unknown:
            raise InvalidArgument(f"unknown parameter(s) for a contour job: {', '.join(sorted(unknown))}")
        int_param(params, "shards", 1, MAX_SHARDS)
        return dict(params)

    def _slabs(self, ctx: JobContext):
        nz = ctx.series_record.n_slices
        n_parts = int_param(ctx.job.params, "shards", 1, MAX_SHARDS) or math.ceil(nz / SLICES_PER_SHARD)
        return plan_slabs(nz, min(n_parts, nz))

    def plan_stage(self, ctx: JobContext, stage: str) -> StagePlan:
        return StagePlan.count(len(self._slabs(ctx)) if stage == "contour" else 1)

    def shard_call(self, ctx: JobContext, shard: ShardRecord) -> ShardCall:
        volume = ctx.volume
        if shard.stage == "contour":
            slab = self._slabs(ctx)[shard.index]
            return ShardCall(
                "contour.slab",
                {
                    "hu": volume.voxels[slab.halo_start : slab.halo_stop],
                    "spacing_mm": volume.spacing_mm,
                    "direction": volume.direction,
                    "slab": slab,
                },
                ShardResources(cpus=1.0, memory_mb=1024),
            )
        return ShardCall(
            "contour.merge",
            {"slab_results": ctx.stage_results("contour"), "series": ctx.series},
            ShardResources(cpus=1.0, memory_mb=4096),
        )
