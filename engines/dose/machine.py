"""Treatment machine models: versioned data files with a schema, and the loader that checks them.

A machine file (YAML, ``machines/<id>.yaml``) holds the geometry (SAD, MLC, jaws), the MU
calibration, the commissioning beam data (depth doses, output factors, penumbrae) and the pencil
beam kernel fitted to that data. Another linac is another file with the same schema.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from rtgrid.engines.dose.kernel import KernelComponent
from rtgrid.engines.errors import EngineError

SCHEMA = "rtgrid-machine/1"
MACHINES_DIR = Path(__file__).resolve().parent / "machines"
STANDARD_MACHINE_ID = "rtgrid-standard-6mv"


class MachineModelError(EngineError, ValueError):
    """A machine file is missing, unreadable or violates the schema (the message names the field)."""


@dataclass(frozen=True)
class PddTable:
    """Percent depth dose of a square open field in water (depths in mm, percent of the maximum)."""

    field_mm: float
    ssd_mm: float
    depths_mm: tuple[float, ...]
    percent: tuple[float, ...]


@dataclass(frozen=True)
class OutputFactorTable:
    """Total scatter factors (dose per MU relative to the reference field) at one depth in water."""

    depth_mm: float
    ssd_mm: float
    reference_field_mm: float
    fields_mm: tuple[float, ...]
    values: tuple[float, ...]


@dataclass(frozen=True)
class PenumbraPoint:
    """80 %-20 % lateral penumbra (mm) of a square open field at one depth in water."""

    field_mm: float
    depth_mm: float
    ssd_mm: float
    width_80_20_mm: float


@dataclass(frozen=True)
class MachineModel:
    """A photon treatment machine: geometry, MLC, calibration, beam data and dose kernel.

    Lengths in mm at the isocenter plane; BEV ``X`` is the leaf-motion direction (IEC 61217
    ``X_b``), ``Y`` the direction across leaf pairs (``Y_b``).
    """

    id: str
    version: str
    description: str
    sad_mm: float
    energy: str
    beam_quality_pdd10x_percent: float
    leaf_widths_mm: tuple[float, ...]
    n_pairs: int
    leaf_boundaries_mm: tuple[float, ...]
    """``n_pairs + 1`` leaf-pair edges along ``Y`` (mm at isocenter), increasing."""
    max_field_mm: tuple[float, float]
    jaw_limits_mm: dict[str, tuple[float, float]]
    """Travel range of each jaw (``X1``, ``X2``, ``Y1``, ``Y2``) as (min, max) positions in mm."""
    min_leaf_gap_mm: float
    interdigitation: bool
    max_leaf_speed_mm_s: float
    max_leaf_span_mm: float
    mu_calibration_cgy_per_mu: float
    calibration_field_mm: float
    calibration_ssd_mm: float
    calibration_depth_mm: float
    kernel: tuple[KernelComponent, ...]
    lateral_cutoff_mm: float
    """Default distance (iso plane) from a bixel centre beyond which the dose matrix stores nothing."""
    pdd_tables: tuple[PddTable, ...]
    output_factors: OutputFactorTable
    penumbra: tuple[PenumbraPoint, ...]
    content_hash: str
    """SHA-256 of the machine file bytes: plans record it to stay tied to the exact model."""
    source_path: str


def list_machines() -> list[str]:
    """Ids of the machine files shipped with rtgrid (sorted)."""
    return sorted(p.stem for p in MACHINES_DIR.glob("*.yaml"))


def _get(mapping: dict[str, Any], key: str, where: str, path: Path) -> Any:
    if not isinstance(mapping, dict) or key not in mapping:
        raise MachineModelError(f"{path}: missing field '{where}{key}'")
    return mapping[key]


def _number(mapping: dict[str, Any], key: str, where: str, path: Path, *, positive: bool = True) -> float:
    value = _get(mapping, key, where, path)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise MachineModelError(f"{path}: field '{where}{key}' must be a number, got {value!r}")
    if positive and value <= 0:
        raise MachineModelError(f"{path}: field '{where}{key}' must be > 0, got {value!r}")
    return float(value)


def _numbers(mapping: dict[str, Any], key: str, where: str, path: Path, *, positive: bool = True) -> tuple[float, ...]:
    values = _get(mapping, key, where, path)
    if not isinstance(values, list) or not values:
        raise MachineModelError(f"{path}: field '{where}{key}' must be a non-empty list of numbers")
    return tuple(_number({key: v}, key, f"{where}", path, positive=positive) for v in values)


def _resolve(path_or_id: str | Path) -> Path:
    candidate = Path(path_or_id)
    if candidate.suffix in (".yaml", ".yml"):
        return candidate
    named = MACHINES_DIR / f"{path_or_id}.yaml"
    if not named.exists():
        raise MachineModelError(f"no machine '{path_or_id}': known ids are {list_machines()} (or give a .yaml path)")
    return named


def load_machine(path_or_id: str | Path = STANDARD_MACHINE_ID) -> MachineModel:
    """Load and validate a machine file.

    Parameters
    ----------
    path_or_id
        A machine id from :func:`list_machines` or a path to a ``.yaml`` machine file.

    Returns
    -------
    MachineModel

    Raises
    ------
    MachineModelError
        The file is missing, not YAML, has another schema, or a field is missing or invalid
        (the message names the file and the field).
    """
    path = _resolve(path_or_id)
    try:
        raw_bytes = path.read_bytes()
    except OSError as exc:
        raise MachineModelError(f"{path}: cannot read machine file ({exc})") from exc
    try:
        doc = yaml.safe_load(raw_bytes)
    except yaml.YAMLError as exc:
        raise MachineModelError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(doc, dict):
        raise MachineModelError(f"{path}: top level must be a mapping")
    schema = _get(doc, "schema", "", path)
    if schema != SCHEMA:
        raise MachineModelError(f"{path}: field 'schema' must be '{SCHEMA}', got {schema!r}")

    geometry = _get(doc, "geometry", "", path)
    mlc = _get(doc, "mlc", "", path)
    widths = _numbers(mlc, "leaf_widths_mm", "mlc.", path)
    n_pairs = _get(mlc, "n_pairs", "mlc.", path)
    if not isinstance(n_pairs, int) or n_pairs != len(widths):
        raise MachineModelError(f"{path}: field 'mlc.n_pairs' ({n_pairs!r}) must equal the number of leaf_widths_mm ({len(widths)})")
    edges = np.concatenate([[0.0], np.cumsum(widths)])
    edges -= edges[-1] / 2.0  # the leaf bank is centred on the beam axis
    interdigitation = _get(mlc, "interdigitation", "mlc.", path)
    if not isinstance(interdigitation, bool):
        raise MachineModelError(f"{path}: field 'mlc.interdigitation' must be true or false, got {interdigitation!r}")
    max_field = _numbers(geometry, "max_field_mm", "geometry.", path)
    if len(max_field) != 2:
        raise MachineModelError(f"{path}: field 'geometry.max_field_mm' must be [X, Y], got {list(max_field)}")
    jaws_raw = _get(geometry, "jaw_limits_mm", "geometry.", path)
    jaws: dict[str, tuple[float, float]] = {}
    for name in ("X1", "X2", "Y1", "Y2"):
        lim = _numbers(jaws_raw, name, "geometry.jaw_limits_mm.", path, positive=False)
        if len(lim) != 2 or lim[0] >= lim[1]:
            raise MachineModelError(f"{path}: field 'geometry.jaw_limits_mm.{name}' must be [min, max] with min < max, got {list(lim)}")
        jaws[name] = (lim[0], lim[1])

    calib = _get(doc, "calibration", "", path)
    kernel_doc = _get(doc, "dose_kernel", "", path)
    comps_raw = _get(kernel_doc, "components", "dose_kernel.", path)
    if not isinstance(comps_raw, list) or not comps_raw:
        raise MachineModelError(f"{path}: field 'dose_kernel.components' must be a non-empty list")
    components = []
    for n, c in enumerate(comps_raw):
        where = f"dose_kernel.components[{n}]."
        components.append(KernelComponent(
            name=str(_get(c, "name", where, path)),
            amplitude=_number(c, "amplitude", where, path),
            buildup_per_mm=_number(c, "buildup_per_mm", where, path),
            attenuation_per_mm=_number(c, "attenuation_per_mm", where, path),
            sigma0_mm=_number(c, "sigma0_mm", where, path),
            sigma_slope=_number(c, "sigma_slope", where, path, positive=False),
        ))

    data = _get(doc, "beam_data", "", path)
    pdds = []
    for n, t in enumerate(_get(data, "pdd", "beam_data.", path)):
        where = f"beam_data.pdd[{n}]."
        depths = _numbers(t, "depths_mm", where, path)
        percent = _numbers(t, "percent", where, path)
        if len(depths) != len(percent):
            raise MachineModelError(f"{path}: '{where}depths_mm' and '{where}percent' differ in length ({len(depths)} vs {len(percent)})")
        pdds.append(PddTable(_number(t, "field_mm", where, path), _number(t, "ssd_mm", where, path), depths, percent))
    of_raw = _get(data, "output_factors", "beam_data.", path)
    of_fields = _numbers(of_raw, "fields_mm", "beam_data.output_factors.", path)
    of_values = _numbers(of_raw, "values", "beam_data.output_factors.", path)
    if len(of_fields) != len(of_values):
        raise MachineModelError(f"{path}: 'beam_data.output_factors.fields_mm' and '.values' differ in length")
    output_factors = OutputFactorTable(
        _number(of_raw, "depth_mm", "beam_data.output_factors.", path),
        _number(of_raw, "ssd_mm", "beam_data.output_factors.", path),
        _number(of_raw, "reference_field_mm", "beam_data.output_factors.", path),
        of_fields, of_values,
    )
    penumbra = tuple(
        PenumbraPoint(*(_number(p, k, f"beam_data.penumbra[{n}].", path) for k in ("field_mm", "depth_mm", "ssd_mm", "width_80_20_mm")))
        for n, p in enumerate(_get(data, "penumbra", "beam_data.", path))
    )

    return MachineModel(
        id=str(_get(doc, "id", "", path)),
        version=str(_get(doc, "version", "", path)),
        description=str(_get(doc, "description", "", path)),
        sad_mm=_number(geometry, "sad_mm", "geometry.", path),
        energy=str(_get(doc, "energy", "", path)),
        beam_quality_pdd10x_percent=_number(_get(doc, "beam_quality", "", path), "pdd10x_percent", "beam_quality.", path),
        leaf_widths_mm=widths,
        n_pairs=n_pairs,
        leaf_boundaries_mm=tuple(float(e) for e in edges),
        max_field_mm=(max_field[0], max_field[1]),
        jaw_limits_mm=jaws,
        min_leaf_gap_mm=_number(mlc, "min_leaf_gap_mm", "mlc.", path, positive=False),
        interdigitation=interdigitation,
        max_leaf_speed_mm_s=_number(mlc, "max_leaf_speed_mm_s", "mlc.", path),
        max_leaf_span_mm=_number(mlc, "max_leaf_span_mm", "mlc.", path),
        mu_calibration_cgy_per_mu=_number(calib, "cgy_per_mu", "calibration.", path),
        calibration_field_mm=_number(calib, "field_mm", "calibration.", path),
        calibration_ssd_mm=_number(calib, "ssd_mm", "calibration.", path),
        calibration_depth_mm=_number(calib, "depth_mm", "calibration.", path),
        kernel=tuple(components),
        lateral_cutoff_mm=_number(kernel_doc, "lateral_cutoff_mm", "dose_kernel.", path),
        pdd_tables=tuple(pdds),
        output_factors=output_factors,
        penumbra=penumbra,
        content_hash=hashlib.sha256(raw_bytes).hexdigest(),
        source_path=str(path),
    )
