"""Shard executors: what an agent runs for each shard task name, calling the engines.

Each executor takes plain keyword arguments (arrays, engine dataclasses, dicts of arrays) and
returns a dict of arrays, bytes and JSON-able values; files to publish are listed under
``"artifacts"`` with their bytes under ``"file:<name>"`` (see ``rtgrid.master.jobs.base``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import contour, conversion, plan, predict

EXECUTORS: dict[str, Callable[..., dict[str, Any]]] = {
    "contour.slab": contour.contour_slab,
    "contour.merge": contour.contour_merge,
    "plan.setup": plan.plan_setup,
    "plan.beam_dij": plan.beam_dij,
    "plan.optimize": plan.plan_optimize,
    "plan.convert_device": conversion.convert_device,
    "predict.dose": predict.predict_dose_shard,
}


def execute(task: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Run the executor named ``task``.

    Raises
    ------
    KeyError
        For a task this agent does not know (an agent older than its master).
    """
    try:
        executor = EXECUTORS[task]
    except KeyError:
        raise KeyError(f"this agent has no executor for task {task!r}; known: {sorted(EXECUTORS)}") from None
    return executor(**kwargs)
