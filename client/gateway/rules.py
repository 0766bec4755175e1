"""Which job a received series starts: rules on the calling AE, modality, series description and
body part, first match wins.

A rules file is YAML or JSON::

    rules:
      - match: {calling_ae: CT_SIM, modality: CT, body_part: "CHEST*"}
        kind: full
        order: orders/lung.yaml          # relative to the rules file
        devices: auto:2
      - match: {series_description: "*head*neck*"}
        kind: contour
        models: [hn-parotids]
      - match: {modality: MR}
        skip: true                       # kept in the spool's unmatched folder, never uploaded

Match values are shell-style patterns (``*``, ``?``, ``[...]``), compared without regard to
case; a key left out matches anything. The gateway's own ``--kind/--models/--order/--devices``
form a last rule that matches every series.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

MATCH_KEYS = ("calling_ae", "modality", "series_description", "body_part")
RULE_KEYS = {"match", "kind", "models", "order", "devices", "priority", "params", "skip"}
JOB_KINDS = ("contour", "plan", "full")


class RulesError(ValueError):
    """A rules file that cannot be used; the message names the rule and the field."""


@dataclass(frozen=True)
class SeriesInfo:
    """What the rules look at, taken from the first instance of a received series."""

    calling_ae: str
    modality: str
    series_description: str = ""
    body_part: str = ""


@dataclass(frozen=True)
class Rule:
    """One rule: a match and the job it starts (``skip``: none)."""

    match: dict[str, str] = field(default_factory=dict)
    kind: str = "contour"
    models: tuple[str, ...] = ()
    order_text: str = ""
    devices: str = ""
    priority: int = 0
    params: dict[str, str] = field(default_factory=dict)
    skip: bool = False
    name: str = ""

    def matches(self, info: SeriesInfo) -> bool:
        return all(fnmatch.fnmatchcase(str(getattr(info, key)).strip().lower(), pattern.lower())
                   for key, pattern in self.match.items())

    def job_params(self) -> dict[str, str]:
        """The ``SubmitJob`` parameters of this rule."""
        params = dict(self.params)
        if self.models:
            params["models"] = ",".join(self.models)
        if self.order_text:
            params["order"] = self.order_text
        if self.devices:
            params["devices"] = self.devices
        return params


def make_rule(kind: str, models: list[str] | tuple[str, ...] = (), order: Path | None = None, devices: str = "",
              priority: int = 0, match: dict[str, str] | None = None, params: dict[str, str] | None = None,
              skip: bool = False, name: str = "") -> Rule:
    """A checked rule.

    Raises
    ------
    RulesError
        An unknown job kind or match key, a plan job without an order, an unreadable order file.
    """
    label = name or "the default rule"
    if not skip and kind not in JOB_KINDS:
        raise RulesError(f"{label}: kind {kind!r} is not one of {', '.join(JOB_KINDS)}")
    unknown = sorted(set(match or {}) - set(MATCH_KEYS))
    if unknown:
        raise RulesError(f"{label}: unknown match key {unknown[0]!r} (known: {', '.join(MATCH_KEYS)})")
    if not skip and kind in ("plan", "full") and order is None:
        raise RulesError(f"{label}: a {kind} job needs an order")
    try:
        order_text = order.read_text() if order is not None else ""
    except OSError as exc:
        raise RulesError(f"{label}: cannot read the order {order}: {exc.strerror}") from None
    models = tuple(m.strip() for item in models for m in str(item).split(",") if m.strip())
    return Rule({k: str(v) for k, v in (match or {}).items()}, kind, models, order_text, devices or "",
                int(priority), {k: str(v) for k, v in (params or {}).items()}, skip, name)


def load_rules(path: Path) -> list[Rule]:
    """The rules of a YAML or JSON file, in order.

    Raises
    ------
    RulesError
        The file is unreadable or not a mapping with a ``rules`` list, or a rule is wrong.
    """
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise RulesError(f"{path}: cannot read the rules: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("rules"), list):
        raise RulesError(f"{path}: expected a mapping with a 'rules' list")
    rules = []
    for i, entry in enumerate(data["rules"], start=1):
        name = f"{path.name} rule {i}"
        if not isinstance(entry, dict):
            raise RulesError(f"{name}: expected a mapping")
        unknown = sorted(set(entry) - RULE_KEYS)
        if unknown:
            raise RulesError(f"{name}: unknown field {unknown[0]!r} (known: {', '.join(sorted(RULE_KEYS))})")
        models = entry.get("models") or ()
        order = entry.get("order")
        rules.append(make_rule(
            str(entry.get("kind", "contour")), [models] if isinstance(models, str) else list(models),
            (path.parent / order) if order else None, str(entry.get("devices") or ""), entry.get("priority", 0),
            entry.get("match") or {}, entry.get("params") or {}, bool(entry.get("skip", False)), name))
    return rules


def choose(rules: list[Rule], info: SeriesInfo) -> Rule | None:
    """The first rule that matches, or None."""
    return next((rule for rule in rules if rule.matches(info)), None)
