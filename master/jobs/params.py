"""Typed job parameters: one frozen dataclass per job kind, parsed once from the strings that travel.

A job's parameters travel and are stored as ``dict[str, str]`` (``JobRecord.params``), so jobs
stored by an older master still load. Each kind's dataclass below declares every parameter once:
its field's default and, for numbers, its range (:func:`bounded`; the unit is in the field's name).
One parse function per kind turns the strings into that dataclass, raising ``InvalidArgument``
naming the parameter, its value and what is allowed. ``validate`` (at submission) and the stages
(``plan_stage``, ``shard_call``) parse the same way; what only the store can check (models,
devices, contours, the order against the structures) stays in the kinds' ``validate``.

The kinds' module docstrings list their parameters for users; this module is where their defaults
and ranges live.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from typing import Any

from rtgrid.engines.dose.beams import equispaced_gantry_angles
from rtgrid.engines.dose.machine import STANDARD_MACHINE_ID, list_machines

from ..errors import InvalidArgument

# Contour jobs: classical z-slabs.
SLICES_PER_SHARD = 16  # default slab height (slices) when ``shards`` is not given
MAX_SHARDS = 64
MAX_BEAMS = 36
DEFAULT_BODY = "BODY"
DEFAULT_DEVICE_RULE = "congestion"


@dataclass(frozen=True)
class Bounds:
    """The closed range ``[low, high]`` of a number parameter; ``unit`` is shown in messages."""

    kind: type
    low: float
    high: float
    unit: str = ""

    def parse(self, name: str, text: str) -> Any:
        """``text`` as a number of ``kind`` within the range.

        Raises
        ------
        InvalidArgument
            Not a number (an integer for ``int``), or outside the range; naming ``name`` and the value.
        """
        try:
            value = self.kind(text)
        except ValueError:
            what = "an integer" if self.kind is int else "a number"
            raise InvalidArgument(f"parameter {name}={text!r} is not {what}") from None
        if not self.low <= value <= self.high:  # NaN fails too
            unit = f" {self.unit}" if self.unit else ""
            raise InvalidArgument(f"parameter {name}={value}{unit} is outside [{self.low}, {self.high}]{unit}")
        return value


def bounded(default: Any, low: float, high: float, unit: str = "") -> Any:
    """A dataclass field holding a number in ``[low, high]`` (an int when the bounds are ints)."""
    kind = int if isinstance(low, int) and isinstance(high, int) else float
    return field(default=default, metadata={"bounds": Bounds(kind, low, high, unit)})


def bounds_of(cls: type, name: str) -> Bounds:
    """The declared range of field ``name`` of a parameter dataclass."""
    return next(f.metadata["bounds"] for f in fields(cls) if f.name == name)


def _numbers(cls: type, params: dict[str, str], names: tuple[str, ...]) -> dict[str, Any]:
    """The given number parameters among ``names``, parsed by their fields' bounds."""
    return {name: bounds_of(cls, name).parse(name, params[name]) for name in names if name in params}


def _reject_unknown(params: dict[str, str], allowed: frozenset[str], kind: str) -> None:
    unknown = set(params) - allowed
    if unknown:
        raise InvalidArgument(f"unknown parameter(s) for a {kind} job: {', '.join(sorted(unknown))}")


def _check_not_a_path(order: str) -> None:
    if "\n" not in order and order.strip().lower().endswith((".yaml", ".yml", ".json")):
        # load_order reads such a value as a path: the master must never open its own files for a client.
        raise InvalidArgument(f"parameter order={order!r} looks like a file path; send the order's text, not a path")


# ---------------------------------------------------------------------------------------------- contour


@dataclass(frozen=True)
class ContourParams:
    """Parameters of a ``contour`` job (``rtgrid.master.jobs.contour`` documents them)."""

    shards: int | None = bounded(None, 1, MAX_SHARDS)  # None: one slab per SLICES_PER_SHARD slices
    models: tuple[str, ...] = ()  # as submitted NAME[@VERSION]; as stored NAME@VERSION:SHA256
    models_skipped: tuple[dict[str, str], ...] = ()  # set by the master: {"model", "sha256", "reason"}
    assist: str = ""  # JSON text (``rtgrid.master.jobs.assist``)

    @property
    def model_hashes(self) -> list[str]:
        """The package hashes of the stored (resolved) ``models``, in order."""
        return [item.rpartition(":")[2] for item in self.models]

    def slab_count(self, n_slices: int) -> int:
        """How many classical slabs a CT of ``n_slices`` slices splits into."""
        return min(self.shards or math.ceil(n_slices / SLICES_PER_SHARD), n_slices)


CONTOUR_PARAMS = frozenset({"shards", "models", "assist"})
CONTOUR_INTERNAL = frozenset({"models_skipped"})


def parse_contour_params(params: dict[str, str], *, submitted: bool = False) -> ContourParams:
    """A contour job's parameters, typed.

    Parameters
    ----------
    params : dict of str to str
        As submitted (``submitted=True``: the master's own parameters are refused as unknown)
        or as stored.

    Raises
    ------
    InvalidArgument
        An unknown parameter, or a bad value (naming the parameter, its value and the range).
    """
    _reject_unknown(params, CONTOUR_PARAMS | (frozenset() if submitted else CONTOUR_INTERNAL), "contour")
    return ContourParams(
        **_numbers(ContourParams, params, ("shards",)),
        models=tuple(item.strip() for item in params.get("models", "").split(",") if item.strip()),
        models_skipped=tuple(json.loads(params.get("models_skipped", "[]"))),
        assist=params.get("assist", ""),
    )


# ---------------------------------------------------------------------------------------------- plan, full


@dataclass(frozen=True)
class PlanParams:
    """Parameters of a ``plan`` or ``full`` job (``rtgrid.master.jobs.plan`` documents them)."""

    order: str  # the medical order's text
    beams: int = bounded(9, 1, MAX_BEAMS)  # equispaced coplanar beams, unless gantry_angles_deg
    gantry_angles_deg: tuple[float, ...] = ()  # explicit gantry angles (IEC 61217)
    bixel_mm: float = bounded(5.0, 2.0, 20.0, "mm")
    dose_grid_mm: float = bounded(3.0, 1.0, 10.0, "mm")
    machine: str = STANDARD_MACHINE_ID
    body: str = DEFAULT_BODY
    contours_job: str = ""  # plan only
    contours_version: int = bounded(0, 0, 10_000)  # plan only: that job's contours version (0: latest approved)
    plan_job: str = ""  # plan only: convert that finished plan's standard plan for devices (convert stage only)
    shards: int | None = bounded(None, 1, MAX_SHARDS)  # full only: the contour stage's slabs
    devices: str = ""  # "" : no convert stage
    device_rule: str = DEFAULT_DEVICE_RULE
    dose_model: str = ""  # set by the master for an order with goals: predicted

    @property
    def angles_deg(self) -> list[float]:
        """The beams' gantry angles (degrees): the explicit ones, else ``beams`` equispaced."""
        return list(self.gantry_angles_deg) or equispaced_gantry_angles(self.beams)

    @property
    def contour(self) -> ContourParams:
        """The contour stages' parameters of a ``full`` job."""
        return ContourParams(shards=self.shards)


PLAN_PARAMS = frozenset({"order", "beams", "gantry_angles", "bixel_mm", "dose_grid_mm", "machine", "body", "devices",
                         "device_rule"})
PLAN_EXTRA = {"plan": frozenset({"contours_job", "contours_version", "plan_job"}), "full": frozenset({"shards"})}
PLAN_INTERNAL = frozenset({"dose_model"})


def _gantry_angles(text: str) -> tuple[float, ...]:
    try:
        angles = [float(a) for a in text.split(",") if a.strip()]
    except ValueError:
        raise InvalidArgument(f"gantry_angles={text!r} is not a comma-separated list of degrees") from None
    if not 1 <= len(angles) <= MAX_BEAMS or any(not 0 <= a < 360 for a in angles):
        raise InvalidArgument(f"gantry_angles: 1 to {MAX_BEAMS} angles in [0, 360) degrees, got {angles}")
    return tuple(angles)


def parse_plan_params(params: dict[str, str], kind: str = "plan", *, submitted: bool = False) -> PlanParams:
    """A ``plan`` or ``full`` job's parameters, typed (the checks that need no store).

    Parameters
    ----------
    params : dict of str to str
        As submitted (``submitted=True``: the master's own parameters are refused as unknown)
        or as stored.
    kind : str
        ``plan`` or ``full`` (each takes one parameter the other does not).

    Raises
    ------
    InvalidArgument
        An unknown parameter, no order, an order that looks like a path, both ``beams`` and
        ``gantry_angles``, a bad number (naming it, its value and the range), an unknown machine,
        ``device_rule`` without ``devices``.
    """
    _reject_unknown(params, PLAN_PARAMS | PLAN_EXTRA[kind] | (frozenset() if submitted else PLAN_INTERNAL), kind)
    if not params.get("order"):
        raise InvalidArgument("a plan needs a medical order: parameter order (YAML or JSON text)")
    _check_not_a_path(params["order"])
    if "gantry_angles" in params and "beams" in params:
        raise InvalidArgument("give either beams or gantry_angles, not both")
    typed = PlanParams(
        order=params["order"],
        gantry_angles_deg=_gantry_angles(params["gantry_angles"]) if "gantry_angles" in params else (),
        **_numbers(PlanParams, params, ("beams", "bixel_mm", "dose_grid_mm", "shards", "contours_version")),
        **{name: params[name] for name in ("machine", "body", "contours_job", "devices", "device_rule", "dose_model",
                                           "plan_job")
           if name in params},
    )
    if typed.machine not in list_machines():
        raise InvalidArgument(f"unknown machine {typed.machine!r}; known: {', '.join(list_machines())}")
    if not typed.devices and "device_rule" in params:
        raise InvalidArgument("device_rule needs devices=auto (or auto:N)")
    return typed


# ---------------------------------------------------------------------------------------------- predict


@dataclass(frozen=True)
class PredictParams:
    """Parameters of a ``predict`` job (``rtgrid.master.jobs.predict`` documents them)."""

    order: str = ""  # "" at submission: the standard head-and-neck order fitted to the case's structures
    body: str = DEFAULT_BODY
    model: str = ""  # set by the master: NAME@VERSION:SHA256 of the dose model


PREDICT_PARAMS = frozenset({"order", "body"})
PREDICT_INTERNAL = frozenset({"model"})


def parse_predict_params(params: dict[str, str], *, submitted: bool = False) -> PredictParams:
    """A ``predict`` job's parameters, typed.

    Raises
    ------
    InvalidArgument
        An unknown parameter, or an order that looks like a file path.
    """
    _reject_unknown(params, PREDICT_PARAMS | (frozenset() if submitted else PREDICT_INTERNAL), "predict")
    typed = PredictParams(**{name: params[name] for name in ("order", "body", "model") if name in params})
    if typed.order:
        _check_not_a_path(typed.order)
    return typed


__all__ = [
    "Bounds", "ContourParams", "DEFAULT_BODY", "DEFAULT_DEVICE_RULE", "MAX_BEAMS", "MAX_SHARDS", "PlanParams",
    "PredictParams", "SLICES_PER_SHARD", "bounded", "bounds_of", "parse_contour_params", "parse_plan_params",
    "parse_predict_params",
]
