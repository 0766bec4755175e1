"""Job kind ``predict``: knowledge-based 3D dose prediction on the case's CT and uploaded contours.

Stages
------
``predict``
    One shard (it wants a GPU agent, as model shards do, and runs on CPU otherwise): the
    structures of the uploaded RTSTRUCT on the CT grid, the prescription levels of the order,
    the built-in dose model (``engines.dose_prediction``), an RTDOSE ``RD.predicted.dcm`` whose
    Series Description says "predicted" and names the model, and ``predicted-dose.json``.

Parameters (strings, as they travel)
------------------------------------
Typed, with their defaults, in ``rtgrid.master.jobs.params``.

``order``  the medical order whose prescription levels (at most three) and targets the model
           takes (YAML or JSON text; ``engines/optimization/ORDER.md``). Default: the standard
           head-and-neck order ``head-and-neck-sib`` fitted to the case's structures.
``body``   the outline structure (default ``BODY``): the prediction is zero outside it.

At submission the job records the model as ``model`` = ``NAME@VERSION:SHA256``; the agent
refuses to predict with weights of another hash.
"""

from __future__ import annotations

import json

from rtgrid.engines.dose_prediction.inputs import N_LEVELS
from rtgrid.engines.dose_prediction.package import BUILTIN_HN, CARD_FILE, HASH_FILE
from rtgrid.engines.optimization.order import MedicalOrderError, load_order
from rtgrid.engines.optimization.standard_orders import HEAD_AND_NECK, standard_order_text
from rtgrid.protos.grid_contract import PredictDoseCall

from ..blobs import BlobStore
from ..errors import FailedPrecondition, InvalidArgument
from ..intake import case_rtstructs
from ..store.base import Store
from ..store.records import JobRecord, ShardRecord
from .base import JobContext, JobKind, ShardCall, ShardResources, StagePlan
from .params import PredictParams, parse_predict_params
from .plan import _case_frame_of_reference, _rtstruct_names


def builtin_model_identity() -> str:
    """``NAME@VERSION:SHA256`` of the shipped dose model (read from its card and hash files).

    Raises
    ------
    FailedPrecondition
        The package is not installed with rtgrid.
    """
    try:
        card = json.loads((BUILTIN_HN / CARD_FILE).read_text("utf-8"))
        sha256 = (BUILTIN_HN / HASH_FILE).read_text().strip()
    except (OSError, json.JSONDecodeError) as exc:
        raise FailedPrecondition(f"the built-in dose model at {BUILTIN_HN} is unusable: {exc}") from None
    return f"{card['name']}@{card['version']}:{sha256}"


class PredictJob(JobKind):
    name = "predict"
    stages = ("predict",)

    def _rtstructs(self, store: Store, blobs: BlobStore, case_id: str) -> list[bytes]:
        """The RTSTRUCTs uploaded on the CT (one drawn on an MR or PET is not on the dose's grid)."""
        return case_rtstructs(store, blobs, case_id, _case_frame_of_reference(store, case_id))

    def validate(self, params: dict[str, str], store: Store, blobs: BlobStore, case_id: str) -> dict[str, str]:
        typed = parse_predict_params(params, submitted=True)
        rtstructs = self._rtstructs(store, blobs, case_id)
        if not rtstructs:
            raise FailedPrecondition("dose prediction needs the case's contours: upload an RTSTRUCT with the CT")
        names = set().union(*(_rtstruct_names(r) for r in rtstructs))
        if typed.body not in names:
            raise InvalidArgument(
                f"the outline structure {typed.body!r} is not among the contours ({', '.join(sorted(names))})")
        params = dict(params)
        order_text = typed.order
        try:
            if not order_text:
                order_text = standard_order_text(HEAD_AND_NECK, names)
            order = load_order(order_text, names)
        except MedicalOrderError as exc:
            raise InvalidArgument(f"medical order: {exc}") from None
        if len(order.levels) > N_LEVELS:
            raise InvalidArgument(f"the order has {len(order.levels)} prescription levels; the dose model takes at most {N_LEVELS}")
        params["order"] = order_text
        params["model"] = builtin_model_identity()
        return params

    def wants_gpu(self, job: JobRecord, shard: ShardRecord) -> bool:
        return shard.stage == "predict"

    def plan_stage(self, ctx: JobContext, stage: str) -> StagePlan:
        return StagePlan.count(1)

    def job_params(self, params: dict[str, str]) -> PredictParams:
        """A stored job's parameters, typed."""
        return parse_predict_params(params)

    def shard_call(self, ctx: JobContext, shard: ShardRecord) -> ShardCall:
        params = self.job_params(ctx.job.params)
        return ShardCall.of(PredictDoseCall(
            series=ctx.series, rtstructs=self._rtstructs(ctx.store, ctx.blobs, ctx.job.case_id),
            order_text=params.order, body=params.body, model=params.model,
        ), ShardResources(cpus=1.0, memory_mb=4096))
