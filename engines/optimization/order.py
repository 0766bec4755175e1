"""The medical order: prescription and dose-volume constraints, loaded from YAML or JSON.

The schema is documented in ``ORDER.md`` beside this module; ``example_order.yaml`` is the
AAPM TG-119 C-shape order. :func:`load_order` is the one way to read an order: it checks every
field against the schema, the structures against those contoured on the patient, and the values
against each other, and raises :class:`MedicalOrderError` saying exactly what is wrong.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from rtgrid.engines.errors import EngineError

#: Constraint types. ``min_dvh``: D(volume_pct) >= dose_gy; ``max_dvh``: D(volume_pct) <= dose_gy,
#: which is the same statement as V(dose_gy) <= volume_pct.
CONSTRAINT_TYPES = ("min_dose", "max_dose", "min_mean_dose", "max_mean_dose", "min_dvh", "max_dvh")
DVH_TYPES = ("min_dvh", "max_dvh")
LOWER_BOUND_TYPES = ("min_dose", "min_mean_dose", "min_dvh")

PRIORITY_HIGHEST = 1
PRIORITY_LOWEST = 5
DEFAULT_PRIORITY = 2
DEFAULT_NORMALIZATION_VOLUME_PCT = 95.0
#: Sanity bounds on an order's doses: beyond them the order is a typo (often cGy written as Gy),
#: not a treatment. Ablative single fractions reach about 34 Gy; external-beam courses stay far
#: below 200 Gy.
MAX_DOSE_GY = 200.0
MAX_DOSE_PER_FRACTION_GY = 40.0
#: Clinical ranges of a course: hyperfractionated head-and-neck schedules reach about 70 fractions
#: (1.15 Gy twice daily, EORTC 22791); low-dose palliation goes down to 0.5 Gy per fraction.
#: Beyond them the order is a typo, not a treatment.
MAX_FRACTIONS = 80
MIN_DOSE_PER_FRACTION_GY = 0.5
#: Prescription levels of one order (simultaneous integrated boost: PTV70 / PTV63 / PTV56).
MAX_PRESCRIPTION_LEVELS = 5

_TOP_LEVEL_KEYS = {"prescription", "prescriptions", "fractions", "constraints", "name", "goals", "goal_margin_gy"}
GOAL_SOURCES = ("order", "predicted")
"""Where the optimizer's goals come from: the order's constraints, or (``predicted``) also the
dose a knowledge-based model predicts for the patient, mimicked voxel by voxel and by its DVHs."""
MAX_GOAL_MARGIN_PCT = 10.0
"""The largest ``goal_margin_gy``, in % of the highest prescription: a margin is room for how the
dose is sampled, not a second set of limits."""
_PRESCRIPTION_KEYS = {"target", "dose_gy", "fractions", "normalization_volume_pct", "priority"}
_LEVEL_KEYS = {"target", "dose_gy", "normalization_volume_pct", "priority"}
_CONSTRAINT_KEYS = {"structure", "type", "dose_gy", "volume_pct", "priority", "hard"}


class MedicalOrderError(EngineError, ValueError):
    """The medical order is malformed, names an unknown structure, or asks for the impossible."""


@dataclass(frozen=True)
class Prescription:
    """Dose prescribed to the target.

    Attributes
    ----------
    target : str
        Structure that receives the prescription.
    dose_gy : float
        Total prescribed dose in Gy.
    fractions : int
        Number of fractions.
    normalization_volume_pct : float
        After optimization the plan is scaled so that D(normalization_volume_pct) of the
        target equals ``dose_gy`` (95: target D95 = Rx).
    priority : int
        Weight class of the target's dose-uniformity objective (1 highest .. 5 lowest).
    """

    target: str
    dose_gy: float
    fractions: int
    normalization_volume_pct: float = DEFAULT_NORMALIZATION_VOLUME_PCT
    priority: int = DEFAULT_PRIORITY

    @property
    def dose_per_fraction_gy(self) -> float:
        return self.dose_gy / self.fractions


@dataclass(frozen=True)
class Constraint:
    """One dose or dose-volume goal on one structure.

    Attributes
    ----------
    structure : str
        Structure name as contoured.
    type : str
        One of :data:`CONSTRAINT_TYPES`.
    dose_gy : float
        Dose level in Gy.
    volume_pct : float or None
        Volume in percent of the structure for ``min_dvh`` / ``max_dvh``; None otherwise.
    priority : int
        1 (highest) .. 5 (lowest): the weight class of its penalty in optimization.
    hard : bool
        A limit the plan must not miss by more than the release tolerance (a failed plan
        otherwise). Default: True for ``max_dose`` (how orders write serial-organ tolerances such
        as the cord's), False for the others, which the optimizer trades against each other.
    """

    structure: str
    type: str
    dose_gy: float
    volume_pct: float | None = None
    priority: int = DEFAULT_PRIORITY
    hard: bool = False

    @property
    def is_lower_bound(self) -> bool:
        """True for goals that ask for at least some dose (min dose, min mean, min DVH)."""
        return self.type in LOWER_BOUND_TYPES

    def describe(self) -> str:
        """Human-readable goal, e.g. ``Core D10% <= 10 Gy``."""
        relation = ">=" if self.is_lower_bound else "<="
        if self.type in DVH_TYPES:
            quantity = f"D{self.volume_pct:g}%"
        else:
            quantity = {"min_dose": "Dmin", "max_dose": "Dmax"}.get(self.type, "Dmean")
        return f"{self.structure} {quantity} {relation} {self.dose_gy:g} Gy"


@dataclass(frozen=True)
class MedicalOrder:
    """A validated medical order.

    Attributes
    ----------
    prescription : Prescription
    constraints : tuple of Constraint
    name : str
        Optional free-text name of the order.
    source : str
        Where it was read from (file path or ``<text>``), for messages and the audit trail.
    lower_levels : tuple of Prescription
        Further prescription levels, in decreasing dose, with the same fractions (a simultaneous
        integrated boost); where targets overlap, the higher level governs.
    goals : str
        ``"order"`` (the constraints drive the optimizer) or ``"predicted"`` (a predicted dose's
        voxels and DVHs are goals too; the constraints are still goals and still judged).
    goal_margin_gy : float
        How far inside its limit the optimizer aims every goal but the normalization (Gy, default
        0); the plan is still judged on the limits as written.
    """

    prescription: Prescription
    constraints: tuple[Constraint, ...]
    name: str = ""
    source: str = "<text>"
    lower_levels: tuple[Prescription, ...] = ()
    goals: str = "order"
    goal_margin_gy: float = 0.0

    @property
    def levels(self) -> tuple[Prescription, ...]:
        """Every prescription level, highest dose first (the first one sets the normalization)."""
        return (self.prescription,) + self.lower_levels

    @property
    def targets(self) -> tuple[str, ...]:
        """The targets of the prescription levels, highest dose first."""
        return tuple(level.target for level in self.levels)

    @property
    def structures(self) -> tuple[str, ...]:
        """Every structure the order names, targets first, without repeats."""
        names = list(self.targets) + [c.structure for c in self.constraints]
        return tuple(dict.fromkeys(names))


def load_order(path_or_text: str | Path, structure_names: Collection[str]) -> MedicalOrder:
    """Read and validate a medical order.

    Parameters
    ----------
    path_or_text : str or Path
        A ``.yaml`` / ``.yml`` / ``.json`` file, or the order's text itself (YAML or JSON).
    structure_names : Collection[str]
        Structures contoured on the patient; the order may only name these (exact spelling).

    Returns
    -------
    MedicalOrder

    Raises
    ------
    MedicalOrderError
        Unreadable file or text, unknown or missing fields, unknown structures or types,
        impossible values (negative dose, volume outside (0, 100] %, fractions < 1) or
        goals that contradict each other or the prescription.
    """
    text, source = _read_source(path_or_text)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise MedicalOrderError(f"{source}: not valid YAML/JSON: {exc}") from exc
    if not isinstance(raw, Mapping):
        raise MedicalOrderError(f"{source}: an order is a mapping with 'prescription' and 'constraints', got {type(raw).__name__}")
    _reject_unknown_keys(raw, _TOP_LEVEL_KEYS, f"{source}")
    known = set(structure_names)
    levels = _parse_levels(raw, known, source)
    raw_constraints = raw.get("constraints", [])
    if raw_constraints is None:
        raw_constraints = []
    if not isinstance(raw_constraints, list):
        raise MedicalOrderError(f"{source}: 'constraints' must be a list, got {type(raw_constraints).__name__}")
    constraints = tuple(
        _parse_constraint(item, index, known, source) for index, item in enumerate(raw_constraints)
    )
    name = raw.get("name", "")
    if not isinstance(name, str):
        raise MedicalOrderError(f"{source}: 'name' must be text, got {name!r}")
    goals = raw.get("goals", "order")
    if goals not in GOAL_SOURCES:
        raise MedicalOrderError(f"{source}: 'goals' must be one of {list(GOAL_SOURCES)}, got {str(goals)[:40]!r}")
    margin = _goal_margin(raw, levels, source)
    order = MedicalOrder(levels[0], constraints, name=name, source=source, lower_levels=levels[1:], goals=goals,
                         goal_margin_gy=margin)
    _check_consistency(order)
    return order


def _goal_margin(raw: Mapping[str, Any], levels: tuple[Prescription, ...], source: str) -> float:
    """``goal_margin_gy``: 0 Gy up to :data:`MAX_GOAL_MARGIN_PCT` of the highest prescription."""
    if "goal_margin_gy" not in raw:
        return 0.0
    margin = _number(raw, "goal_margin_gy", source)
    limit = MAX_GOAL_MARGIN_PCT / 100.0 * max(level.dose_gy for level in levels)
    if not 0.0 <= margin <= limit:
        raise MedicalOrderError(f"{source}: 'goal_margin_gy' must lie between 0 and {limit:g} Gy "
                                f"({MAX_GOAL_MARGIN_PCT:g} % of the highest prescription), got {margin:g}")
    return margin


def _read_source(path_or_text: str | Path) -> tuple[str, str]:
    if isinstance(path_or_text, Path) or (
        "\n" not in path_or_text and path_or_text.strip().lower().endswith((".yaml", ".yml", ".json"))
    ):
        path = Path(path_or_text)
        try:
            return path.read_text(encoding="utf-8"), str(path)
        except OSError as exc:
            raise MedicalOrderError(f"cannot read the medical order file {path}: {exc.strerror}") from exc
    return path_or_text, "<text>"


def _reject_unknown_keys(raw: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise MedicalOrderError(f"{where}: unknown field(s) {unknown}; allowed: {sorted(allowed)}")


def _check_structure(name: Any, known: set[str], where: str) -> str:
    if not isinstance(name, str) or not name:
        raise MedicalOrderError(f"{where}: structure must be a non-empty name, got {name!r}")
    if name not in known:
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise MedicalOrderError(f"{where}: unknown structure {name!r}{hint}; the patient has {sorted(known)}")
    return name


def _number(raw: Mapping[str, Any], key: str, where: str) -> float:
    if key not in raw:
        raise MedicalOrderError(f"{where}: '{key}' is missing")
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise MedicalOrderError(f"{where}: '{key}' must be a finite number, got {value!r}")
    return float(value)


def _check_dose_bound(dose_gy: float, where: str) -> None:
    if dose_gy > MAX_DOSE_GY:
        raise MedicalOrderError(
            f"{where}: dose_gy {dose_gy:g} is above {MAX_DOSE_GY:g} Gy, no treatment's dose (cGy written as Gy?)"
        )


def _priority(raw: Mapping[str, Any], where: str) -> int:
    value = raw.get("priority", DEFAULT_PRIORITY)
    if isinstance(value, bool) or not isinstance(value, int) or not PRIORITY_HIGHEST <= value <= PRIORITY_LOWEST:
        raise MedicalOrderError(
            f"{where}: 'priority' must be an integer from {PRIORITY_HIGHEST} (highest) to {PRIORITY_LOWEST}, got {value!r}"
        )
    return value


def _parse_levels(raw: Mapping[str, Any], known: set[str], source: str) -> tuple[Prescription, ...]:
    """``prescription:`` (one level, its own fractions) or ``prescriptions:`` with ``fractions:``."""
    if "prescription" in raw and "prescriptions" in raw:
        raise MedicalOrderError(f"{source}: give either 'prescription' or 'prescriptions', not both")
    if "prescription" in raw:
        if "fractions" in raw:
            raise MedicalOrderError(f"{source}: 'fractions' goes inside 'prescription' (top level only with 'prescriptions')")
        return (_parse_prescription(raw["prescription"], known, source),)
    if "prescriptions" not in raw:
        raise MedicalOrderError(f"{source}: 'prescription' is missing (or 'prescriptions' with 'fractions')")
    items = raw["prescriptions"]
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_PRESCRIPTION_LEVELS:
        raise MedicalOrderError(
            f"{source}: 'prescriptions' must be a list of 1 to {MAX_PRESCRIPTION_LEVELS} levels, got {items!r}"[:400]
        )
    if "fractions" not in raw:
        raise MedicalOrderError(f"{source}: 'fractions' is missing (one number for all prescription levels)")
    levels = []
    for index, item in enumerate(items):
        where = f"{source}: prescriptions[{index}]"
        if not isinstance(item, Mapping):
            raise MedicalOrderError(f"{where}: must be a mapping with target and dose_gy, got {item!r}"[:400])
        _reject_unknown_keys(item, _LEVEL_KEYS, where)
        levels.append(_parse_prescription({**item, "fractions": raw["fractions"]}, known, source, where))
    for higher, lower in zip(levels, levels[1:]):
        if lower.dose_gy >= higher.dose_gy:
            raise MedicalOrderError(
                f"{source}: prescription levels out of order: {lower.target} {lower.dose_gy:g} Gy comes after "
                f"{higher.target} {higher.dose_gy:g} Gy; list them from the highest dose down, each dose once"
            )
    targets = [level.target for level in levels]
    repeated = sorted({t for t in targets if targets.count(t) > 1})
    if repeated:
        raise MedicalOrderError(f"{source}: target {', '.join(repeated)} has more than one prescription level")
    if any("normalization_volume_pct" in item for item in items[1:]):
        raise MedicalOrderError(
            f"{source}: only the first (highest) level sets the normalization (normalization_volume_pct)"
        )
    return tuple(levels)


def _parse_prescription(raw: Any, known: set[str], source: str, where: str = "") -> Prescription:
    where = where or f"{source}: prescription"
    if not isinstance(raw, Mapping):
        raise MedicalOrderError(f"{where}: must be a mapping with target, dose_gy, fractions, got {raw!r}"[:400])
    _reject_unknown_keys(raw, _PRESCRIPTION_KEYS, where)
    if "target" not in raw:
        raise MedicalOrderError(f"{where}: 'target' is missing")
    target = _check_structure(raw["target"], known, where)
    dose_gy = _number(raw, "dose_gy", where)
    if dose_gy <= 0:
        raise MedicalOrderError(f"{where}: dose_gy must be positive, got {dose_gy:g}")
    _check_dose_bound(dose_gy, where)
    fractions = raw.get("fractions")
    if fractions is None:
        raise MedicalOrderError(f"{where}: 'fractions' is missing")
    if isinstance(fractions, bool) or not isinstance(fractions, int) or not 1 <= fractions <= MAX_FRACTIONS:
        raise MedicalOrderError(
            f"{where}: fractions must be a whole number from 1 to {MAX_FRACTIONS}, got {str(fractions)[:40]}"
        )
    per_fraction = dose_gy / fractions
    if per_fraction > MAX_DOSE_PER_FRACTION_GY:
        raise MedicalOrderError(
            f"{where}: {dose_gy:g} Gy in {fractions} fraction(s) is {per_fraction:g} Gy per fraction, "
            f"above the {MAX_DOSE_PER_FRACTION_GY:g} Gy any fraction can safely carry"
        )
    if per_fraction < MIN_DOSE_PER_FRACTION_GY:
        raise MedicalOrderError(
            f"{where}: {dose_gy:g} Gy in {fractions} fractions is {per_fraction:.3g} Gy per fraction, "
            f"below the {MIN_DOSE_PER_FRACTION_GY:g} Gy of any clinical schedule"
        )
    norm_pct = DEFAULT_NORMALIZATION_VOLUME_PCT
    if "normalization_volume_pct" in raw:
        norm_pct = _number(raw, "normalization_volume_pct", where)
        if not 0 < norm_pct <= 100:
            raise MedicalOrderError(f"{where}: normalization_volume_pct must lie in (0, 100], got {norm_pct:g}")
    return Prescription(target, dose_gy, fractions, norm_pct, _priority(raw, where))


def _parse_constraint(raw: Any, index: int, known: set[str], source: str) -> Constraint:
    where = f"{source}: constraints[{index}]"
    if not isinstance(raw, Mapping):
        raise MedicalOrderError(f"{where}: must be a mapping with structure, type, dose_gy, got {raw!r}")
    _reject_unknown_keys(raw, _CONSTRAINT_KEYS, where)
    if "structure" not in raw:
        raise MedicalOrderError(f"{where}: 'structure' is missing")
    structure = _check_structure(raw["structure"], known, where)
    where = f"{where} ({structure})"
    kind = raw.get("type")
    if kind not in CONSTRAINT_TYPES:
        raise MedicalOrderError(f"{where}: type must be one of {list(CONSTRAINT_TYPES)}, got {kind!r}")
    dose_gy = _number(raw, "dose_gy", where)
    if dose_gy < 0:
        raise MedicalOrderError(f"{where}: dose_gy must not be negative, got {dose_gy:g}")
    _check_dose_bound(dose_gy, where)
    if kind in LOWER_BOUND_TYPES and dose_gy == 0:
        raise MedicalOrderError(f"{where}: a {kind} of 0 Gy asks for nothing; remove it")
    volume_pct = None
    if kind in DVH_TYPES:
        volume_pct = _number(raw, "volume_pct", where)
        if not 0 < volume_pct <= 100:
            raise MedicalOrderError(
                f"{where}: volume_pct must lie in (0, 100], got {volume_pct:g} (use max_dose for the hottest point)"
            )
    elif "volume_pct" in raw:
        raise MedicalOrderError(f"{where}: volume_pct only applies to min_dvh and max_dvh, not to {kind}")
    hard = raw.get("hard", kind == "max_dose")
    if not isinstance(hard, bool):
        raise MedicalOrderError(f"{where}: 'hard' must be true or false, got {hard!r}"[:400])
    return Constraint(structure, kind, dose_gy, volume_pct, _priority(raw, where), hard)


def _dvh_level(constraint: Constraint) -> float | None:
    """Volume (%) at which a goal bounds the DVH; max dose is D0, min dose D100; None for means."""
    if constraint.type in DVH_TYPES:
        return constraint.volume_pct
    return {"max_dose": 0.0, "min_dose": 100.0}.get(constraint.type)


def _check_consistency(order: MedicalOrder) -> None:
    """Reject goals no dose distribution can meet together.

    D(v) does not increase with v, so ``D(v) >= a`` and ``D(w) <= b`` with ``w <= v`` need
    ``a <= b``; a mean lies between the minimum and the maximum. The prescription counts as
    both bounds at its normalization volume, since the plan is scaled to meet it exactly.
    """
    rx = order.prescription
    implied = (
        Constraint(rx.target, "min_dvh", rx.dose_gy, rx.normalization_volume_pct),
        Constraint(rx.target, "max_dvh", rx.dose_gy, rx.normalization_volume_pct),
    )
    goals = list(order.constraints) + list(implied)
    for low in (g for g in goals if g.is_lower_bound):
        for high in (g for g in goals if not g.is_lower_bound and g.structure == low.structure):
            if low.dose_gy <= high.dose_gy:
                continue
            v, w = _dvh_level(low), _dvh_level(high)
            mean_vs_bound = (low.type == "min_mean_dose" and w == 0.0) or (high.type == "max_mean_dose" and v == 100.0)
            both_means = low.type == "min_mean_dose" and high.type == "max_mean_dose"
            if (v is not None and w is not None and w <= v) or mean_vs_bound or both_means:
                raise MedicalOrderError(
                    f"{order.source}: impossible goals for {low.structure}: "
                    f"{_label(low, implied)} cannot hold together with {_label(high, implied)}"
                )


def _label(goal: Constraint, implied: tuple[Constraint, ...]) -> str:
    is_prescription = any(goal is g for g in implied)
    suffix = " (the prescription, to which the plan is normalized)" if is_prescription else ""
    return f"'{goal.describe()}'{suffix}"
