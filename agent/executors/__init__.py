"""Shard executors: what an agent runs for each shard task name, calling the engines.

Each executor takes plain keyword arguments (arrays, engine dataclasses, dicts of arrays) and
returns a dict of arrays, bytes and JSON-able values; files to publish follow
:mod:`rtgrid.protos.grid_contract` (``files.artifact``). Task names are the contract's :class:`Task`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rtgrid.protos.grid_contract import Task

from . import contour, conversion, plan, predict

EXECUTORS: dict[str, Callable[..., dict[str, Any]]] = {
    Task.CONTOUR_SLAB: contour.contour_slab,
    Task.CONTOUR_MERGE: contour.contour_merge,
    Task.PLAN_SETUP: plan.plan_setup,
    Task.PLAN_BEAM_DIJ: plan.beam_dij,
    Task.PLAN_OPTIMIZE: plan.plan_optimize,
    Task.PLAN_CONVERT_DEVICE: conversion.convert_device,
    Task.PREDICT_DOSE: predict.predict_dose_shard,
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
