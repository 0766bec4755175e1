"""The release policy as data: conversion attempts and QA tolerances, loaded from a versioned YAML.

The shipped policy lives beside the machine models (``engines/dose/release-policy/default.yaml``,
schema ``rtgrid-release-policy/1``). Every field is required, unknown keys are refused, and every
error names the file and the field (``conversion.attempts[1].n_levels``), so a clinic editing its
own policy learns exactly what to fix.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import yaml

from rtgrid.engines.dose.machine import MACHINES_DIR
from rtgrid.engines.errors import EngineError

SCHEMA = "rtgrid-release-policy/1"
DEFAULT_POLICY_PATH = MACHINES_DIR.parent / "release-policy" / "default.yaml"
MAX_ATTEMPTS = 10
"""Regeneration stays bounded: at most this many attempts per device plan."""

# convert_plan keyword -> (type, lowest, highest), both inclusive.
ATTEMPT_SETTINGS: Mapping[str, tuple[type, float, float]] = MappingProxyType({
    "n_levels": (int, 1, 1000),
    "threshold": (float, 0.0, 1.0),
    "max_iter": (int, 1, 100_000),
    "correction_rounds": (int, 0, 20),
    "column_mm": (float, 0.5, 50.0),
    "margin_mm": (float, 0.0, 100.0),
    "resolution_mm": (float, 0.1, 20.0),
})


class ReleasePolicyError(EngineError, ValueError):
    """A release policy file is missing, unreadable or violates the schema (the message names the field)."""


@dataclass(frozen=True)
class GammaCriteria:
    """Gamma criteria of plan QA (global normalisation).

    Attributes
    ----------
    dose_percent : float
        Dose criterion, % of the reference maximum.
    distance_mm : float
        Distance-to-agreement criterion, mm.
    threshold_percent : float
        Low-dose threshold, % of the reference maximum.
    pass_rate_pct : float
        Percentage of evaluated points with gamma <= 1 needed to pass.
    """

    dose_percent: float
    distance_mm: float
    threshold_percent: float
    pass_rate_pct: float


@dataclass(frozen=True)
class QaTolerances:
    """How QA judges a device plan.

    Attributes
    ----------
    gamma : GammaCriteria
    goal_tolerance : float
        Rounding room of every goal, as a fraction of the prescription.
    hard_priority : int
        Constraints of this priority or a more important one (lower number) are hard goals.
    """

    gamma: GammaCriteria
    goal_tolerance: float
    hard_priority: int

    @property
    def hard_goal_slack(self) -> float:
        """How far (fraction of the prescription) a hard goal may fall behind the standard plan: the gamma dose criterion."""
        return self.gamma.dose_percent / 100.0


@dataclass(frozen=True)
class StandardPlanTolerances:
    """How a standard plan is judged before anything is built on it.

    Attributes
    ----------
    hot_spot_limit : float
        Largest dose maximum in the body, as a fraction of the highest prescription.
    hard_goal_tolerance : float
        Largest miss of a hard goal, as a fraction of the highest prescription.
    """

    hot_spot_limit: float
    hard_goal_tolerance: float


@dataclass(frozen=True)
class ReleasePolicy:
    """A loaded release policy.

    Attributes
    ----------
    id : str
    version : int
    attempts : tuple of dict
        Per attempt, the keyword settings of :func:`~rtgrid.engines.conversion.convert.convert_plan`
        (plain dicts, so that a policy pickles; treat them as read-only).
    qa : QaTolerances
    standard_plan : StandardPlanTolerances
    content_hash : str
        SHA-256 of the file bytes: QA reports record it.
    source_path : str
    """

    id: str
    version: int
    attempts: tuple[dict[str, Any], ...]
    qa: QaTolerances
    standard_plan: StandardPlanTolerances
    content_hash: str
    source_path: str

    def describe(self) -> dict[str, Any]:
        """Identity of the policy for reports: schema, id, version, SHA-256."""
        return {"schema": SCHEMA, "id": self.id, "version": self.version, "sha256": self.content_hash}


def load_release_policy(path: str | Path | None = None) -> ReleasePolicy:
    """Load and validate a release policy file.

    Parameters
    ----------
    path
        A ``.yaml`` file of schema ``rtgrid-release-policy/1``; the shipped default when not given.

    Returns
    -------
    ReleasePolicy

    Raises
    ------
    ReleasePolicyError
        The file is missing or not YAML, has another schema, or a field is missing, unknown, of the
        wrong type or out of range (the message names the file and the field).
    """
    source = Path(path) if path is not None else DEFAULT_POLICY_PATH
    try:
        raw_bytes = source.read_bytes()
    except OSError as exc:
        raise ReleasePolicyError(f"{source}: cannot read the release policy ({exc})") from exc
    try:
        raw = yaml.safe_load(raw_bytes)
    except yaml.YAMLError as exc:
        raise ReleasePolicyError(f"{source}: not valid YAML ({exc})") from exc
    fields = _Fields(source)
    top = fields.section(raw, "", ("schema", "id", "version", "conversion", "qa", "standard_plan"))
    if top["schema"] != SCHEMA:
        raise ReleasePolicyError(f"{source}: field 'schema' must be {SCHEMA!r}, got {top['schema']!r}")
    if not isinstance(top["id"], str) or not top["id"]:
        raise ReleasePolicyError(f"{source}: field 'id' must be a non-empty string, got {top['id']!r}")
    conversion = fields.section(top["conversion"], "conversion", ("attempts",))
    qa = fields.section(top["qa"], "qa", ("gamma", "goal_tolerance", "hard_priority"))
    gamma = fields.section(qa["gamma"], "qa.gamma", ("dose_percent", "distance_mm", "threshold_percent", "pass_rate_pct"))
    standard = fields.section(top["standard_plan"], "standard_plan", ("hot_spot_limit", "hard_goal_tolerance"))
    return ReleasePolicy(
        id=top["id"],
        version=fields.number(top, "version", "version", int, 1, 1_000_000),
        attempts=_attempts(fields, conversion["attempts"]),
        qa=QaTolerances(
            gamma=GammaCriteria(
                dose_percent=fields.number(gamma, "dose_percent", "qa.gamma.dose_percent", float, 0.1, 100.0),
                distance_mm=fields.number(gamma, "distance_mm", "qa.gamma.distance_mm", float, 0.1, 50.0),
                threshold_percent=fields.number(gamma, "threshold_percent", "qa.gamma.threshold_percent", float, 0.0, 100.0),
                pass_rate_pct=fields.number(gamma, "pass_rate_pct", "qa.gamma.pass_rate_pct", float, 0.1, 100.0),
            ),
            goal_tolerance=fields.number(qa, "goal_tolerance", "qa.goal_tolerance", float, 0.0, 0.1),
            hard_priority=fields.number(qa, "hard_priority", "qa.hard_priority", int, 1, 100),
        ),
        standard_plan=StandardPlanTolerances(
            hot_spot_limit=fields.number(standard, "hot_spot_limit", "standard_plan.hot_spot_limit", float, 1.0, 3.0),
            hard_goal_tolerance=fields.number(standard, "hard_goal_tolerance", "standard_plan.hard_goal_tolerance",
                                              float, 0.0, 1.0),
        ),
        content_hash=hashlib.sha256(raw_bytes).hexdigest(),
        source_path=str(source),
    )


def _attempts(fields: _Fields, raw: Any) -> tuple[dict[str, Any], ...]:
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_ATTEMPTS:
        raise ReleasePolicyError(f"{fields.source}: field 'conversion.attempts' must be a list of 1 to {MAX_ATTEMPTS} "
                                 f"attempts, got {raw!r}")
    attempts = []
    for n, entry in enumerate(raw):
        where = f"conversion.attempts[{n}]"
        section = fields.section(entry, where, tuple(ATTEMPT_SETTINGS), required=False)
        attempts.append({key: fields.number(section, key, f"{where}.{key}", *ATTEMPT_SETTINGS[key]) for key in section})
    return tuple(attempts)


class _Fields:
    """Checks of one file's fields; every error names the file and the field."""

    def __init__(self, source: Path) -> None:
        self.source = source

    def section(self, raw: Any, where: str, keys: tuple[str, ...], *, required: bool = True) -> dict[str, Any]:
        """A mapping with only ``keys`` (all of them when ``required``)."""
        name = where or "the top level"
        if not isinstance(raw, dict):
            raise ReleasePolicyError(f"{self.source}: '{name}' must be a mapping, got {raw!r}")
        unknown = sorted(str(k) for k in raw if k not in keys)
        if unknown:
            raise ReleasePolicyError(f"{self.source}: unknown field '{_join(where, unknown[0])}'; "
                                     f"known fields of '{name}': {', '.join(keys)}")
        missing = [k for k in keys if k not in raw] if required else []
        if missing:
            raise ReleasePolicyError(f"{self.source}: missing field '{_join(where, missing[0])}'")
        return raw

    def number(self, section: dict[str, Any], key: str, where: str, kind: type, low: float, high: float) -> Any:
        """``section[key]`` as ``kind`` (an int is a valid float), within ``[low, high]``."""
        value = section[key]
        if kind is int:
            valid = isinstance(value, int) and not isinstance(value, bool)
        else:
            valid = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not valid:
            raise ReleasePolicyError(f"{self.source}: field '{where}' must be {'an integer' if kind is int else 'a number'}, "
                                     f"got {value!r}")
        if not low <= value <= high:
            raise ReleasePolicyError(f"{self.source}: field '{where}' must be in [{low:g}, {high:g}], got {value!r}")
        return kind(value)


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


DEFAULT_POLICY = load_release_policy()
"""The shipped policy, loaded once at import: a broken default fails loudly there."""
