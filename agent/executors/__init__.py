"""Shard executors: what an agent runs for each shard task name, calling the engines.

Each executor takes its task's typed call (:mod:`rtgrid.protos.grid_contract`: ``ContourSlabCall``
...) and returns a dict of arrays, bytes and JSON-able values (a typed result's ``to_result``);
files to publish follow the contract too (``files.artifact``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rtgrid.protos.grid_contract import ShardArgs, Task, shard_call_from

from . import contour, conversion, plan, predict, register

EXECUTORS: dict[str, Callable[[Any], dict[str, Any]]] = {
    Task.CONTOUR_SLAB: contour.contour_slab,
    Task.CONTOUR_MERGE: contour.contour_merge,
    Task.PLAN_SETUP: plan.plan_setup,
    Task.PLAN_BEAM_DIJ: plan.beam_dij,
    Task.PLAN_OPTIMIZE: plan.plan_optimize,
    Task.PLAN_CONVERT_DEVICE: conversion.convert_device,
    Task.PREDICT_DOSE: predict.predict_dose_shard,
    Task.REGISTER_SERIES: register.register_series,
}


def execute(task: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Run the executor named ``task`` on its typed call, built from ``kwargs``.

    Raises
    ------
    KeyError
        For a task this agent does not know (an agent older than its master).
    TypeError
        For arguments the task's call does not take or lacks (named).
    """
    try:
        executor = EXECUTORS[task]
    except KeyError:
        raise KeyError(f"this agent has no executor for task {task!r}; known: {sorted(EXECUTORS)}") from None
    call: ShardArgs = shard_call_from(task, kwargs)
    return executor(call)
