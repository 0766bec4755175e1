"""CT numbers (HU) to relative electron density (water = 1) by a piecewise-linear calibration table.

The default table (``calibration/default.yaml``) states its source; a scanner with its own
measured calibration passes its table (same schema) to override it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import yaml

from rtgrid.engines.errors import EngineError

SCHEMA = "rtgrid-density-table/1"
DEFAULT_TABLE_PATH = Path(__file__).resolve().parent / "calibration" / "default.yaml"


class DensityTableError(EngineError, ValueError):
    """A density table is missing, unreadable or violates the schema (the message names the field)."""


@dataclass(frozen=True)
class DensityTable:
    """HU -> relative electron density points (HU strictly increasing); clamped beyond the ends."""

    id: str
    version: str
    source: str
    hu: tuple[float, ...]
    relative_electron_density: tuple[float, ...]


def load_density_table(path: str | Path) -> DensityTable:
    """Load and validate a HU -> relative electron density table.

    Raises
    ------
    DensityTableError
        Unreadable file, wrong schema, missing field, fewer than two points, HU not strictly
        increasing, or a negative density (the message names the file and the entry).
    """
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise DensityTableError(f"{path}: cannot read density table ({exc})") from exc
    if not isinstance(doc, dict):
        raise DensityTableError(f"{path}: top level must be a mapping")
    for key in ("schema", "id", "version", "source", "points"):
        if key not in doc:
            raise DensityTableError(f"{path}: missing field '{key}'")
    if doc["schema"] != SCHEMA:
        raise DensityTableError(f"{path}: field 'schema' must be '{SCHEMA}', got {doc['schema']!r}")
    points = doc["points"]
    if not isinstance(points, list) or len(points) < 2:
        raise DensityTableError(f"{path}: field 'points' must list at least two [HU, density] pairs")
    hu, red = [], []
    for n, p in enumerate(points):
        if not (isinstance(p, list) and len(p) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in p)):
            raise DensityTableError(f"{path}: points[{n}] must be [HU, density], got {p!r}")
        if p[1] < 0:
            raise DensityTableError(f"{path}: points[{n}] has a negative density {p[1]}")
        if hu and p[0] <= hu[-1]:
            raise DensityTableError(f"{path}: points[{n}] HU {p[0]} is not greater than the previous {hu[-1]}")
        hu.append(float(p[0]))
        red.append(float(p[1]))
    return DensityTable(str(doc["id"]), str(doc["version"]), str(doc["source"]), tuple(hu), tuple(red))


@lru_cache(maxsize=1)
def default_density_table() -> DensityTable:
    """The table shipped with rtgrid (``calibration/default.yaml``)."""
    return load_density_table(DEFAULT_TABLE_PATH)


def hu_to_relative_electron_density(hu: np.ndarray, table: DensityTable | None = None) -> np.ndarray:
    """Relative electron density (``float32``, same shape) by linear interpolation in ``table``
    (default: :func:`default_density_table`), clamped to the end values outside its HU range."""
    table = default_density_table() if table is None else table
    return np.interp(np.asarray(hu, dtype=np.float32), table.hu, table.relative_electron_density).astype(np.float32)
