"""Target devices: a machine model plus what delivering on it needs (MU limits, jaws, leaf travel).

A device file is a machine file (``rtgrid.engines.dose.machines/<id>.yaml``, schema
``rtgrid-machine/1``, read by :func:`rtgrid.engines.dose.machine.load_machine`) with one more
top-level section, ``device``::

    device:
      manufacturer: Elekta
      model: Versa HD
      mlc_model: Agility
      x_jaws: false               # whether X jaws back up the leaves
      leaf_overtravel_mm: 150.0   # how far a leaf may cross the beam axis
      min_segment_mu: 2.0         # smallest MU of one step-and-shoot segment
      max_mu_per_beam: 999.0      # MU ceiling of one beam
      max_segments_per_beam: 40   # segment ceiling of one beam

The machine loader ignores the section; :func:`load_device` reads both and checks the section.
A machine file without it (the standard machine) is a planning model, not a deliverable device.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from rtgrid.engines.dose.machine import MACHINES_DIR, MachineModel, MachineModelError, load_machine
from rtgrid.engines.errors import EngineError


class DeviceModelError(EngineError, ValueError):
    """A device file is missing, has no ``device`` section, or a device field is invalid."""


@dataclass(frozen=True)
class DeviceModel:
    """A deliverable treatment device: its machine model plus delivery limits.

    Attributes
    ----------
    machine : MachineModel
        Geometry, MLC, calibration and the dose kernel commissioned to this device's beam data.
    manufacturer, model, mlc_model : str
    x_jaws : bool
        True when X jaws back up the leaves (closed leaf pairs can hide under them).
    leaf_overtravel_mm : float
        How far (mm at isocenter) a leaf may travel across the beam axis into the opposite half.
    min_segment_mu : float
        Smallest MU of one step-and-shoot segment.
    max_mu_per_beam : float
        Largest MU of one beam (one fraction).
    max_segments_per_beam : int
    """

    machine: MachineModel
    manufacturer: str
    model: str
    mlc_model: str
    x_jaws: bool
    leaf_overtravel_mm: float
    min_segment_mu: float
    max_mu_per_beam: float
    max_segments_per_beam: int

    @property
    def id(self) -> str:
        return self.machine.id

    @property
    def leaf_boundaries_mm(self) -> np.ndarray:
        """``n_pairs + 1`` leaf-pair edges along ``Y`` (mm at isocenter), increasing."""
        return np.asarray(self.machine.leaf_boundaries_mm, dtype=np.float64)

    @property
    def n_pairs(self) -> int:
        return self.machine.n_pairs


def list_devices() -> list[str]:
    """Ids of the shipped machine files that are deliverable devices (have a ``device`` section)."""
    ids = []
    for path in sorted(MACHINES_DIR.glob("*.yaml")):
        doc = yaml.safe_load(path.read_bytes())
        if isinstance(doc, dict) and "device" in doc:
            ids.append(path.stem)
    return ids


def _field(section: dict[str, Any], key: str, kind: type, path: Path) -> Any:
    if key not in section:
        raise DeviceModelError(f"{path}: missing field 'device.{key}'")
    value = section[key]
    if kind is bool:
        if not isinstance(value, bool):
            raise DeviceModelError(f"{path}: field 'device.{key}' must be true or false, got {value!r}")
        return value
    if kind is str:
        if not isinstance(value, str) or not value:
            raise DeviceModelError(f"{path}: field 'device.{key}' must be non-empty text, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value <= 0:
        raise DeviceModelError(f"{path}: field 'device.{key}' must be a number > 0, got {value!r}")
    if kind is int and int(value) != value:
        raise DeviceModelError(f"{path}: field 'device.{key}' must be a whole number, got {value!r}")
    return kind(value)


def load_device(path_or_id: str | Path) -> DeviceModel:
    """Load a device file: its machine model and its ``device`` section.

    Parameters
    ----------
    path_or_id
        A device id (see :func:`list_devices`) or a path to a ``.yaml`` machine file.

    Returns
    -------
    DeviceModel

    Raises
    ------
    DeviceModelError
        The file has no ``device`` section or a device field is missing or invalid, or the machine
        part is invalid (the message names the file and the field).
    """
    try:
        machine = load_machine(path_or_id)
    except MachineModelError as exc:
        raise DeviceModelError(str(exc)) from exc
    path = Path(machine.source_path)
    doc = yaml.safe_load(path.read_bytes())
    section = doc.get("device")
    if not isinstance(section, dict):
        raise DeviceModelError(
            f"{path}: machine '{machine.id}' has no 'device' section: it is a planning model, not a deliverable "
            f"device (devices: {list_devices()})"
        )
    unknown = sorted(set(section) - {
        "manufacturer", "model", "mlc_model", "x_jaws", "leaf_overtravel_mm", "min_segment_mu", "max_mu_per_beam",
        "max_segments_per_beam",
    })
    if unknown:
        raise DeviceModelError(f"{path}: unknown field(s) {['device.' + k for k in unknown]}")
    return DeviceModel(
        machine=machine,
        manufacturer=_field(section, "manufacturer", str, path),
        model=_field(section, "model", str, path),
        mlc_model=_field(section, "mlc_model", str, path),
        x_jaws=_field(section, "x_jaws", bool, path),
        leaf_overtravel_mm=_field(section, "leaf_overtravel_mm", float, path),
        min_segment_mu=_field(section, "min_segment_mu", float, path),
        max_mu_per_beam=_field(section, "max_mu_per_beam", float, path),
        max_segments_per_beam=_field(section, "max_segments_per_beam", int, path),
    )
