"""The standard plan as the conversion receives it: beams, bixels, fluence, machine, dose and order.

It travels as an artifact: :meth:`StandardPlan.to_bytes` writes an ``.npz`` archive (no pickle)
holding the arrays and one JSON document (``meta``) with everything else.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass

import numpy as np

from rtgrid.engines.dose.beams import Beam, BixelGrid
from rtgrid.engines.dose.machine import MachineModel
from rtgrid.engines.errors import EngineError
from rtgrid.engines.imaging.volume import Volume
from rtgrid.engines.optimization.order import Constraint, MedicalOrder, Prescription

FORMAT = "rtgrid-standard-plan/1"


class StandardPlanError(EngineError, ValueError):
    """A standard plan whose parts do not fit together, or bytes that are not one."""


@dataclass(frozen=True)
class StandardPlan:
    """A plan optimized on the standard machine.

    Attributes
    ----------
    machine_id, machine_hash : str
        The standard machine and the SHA-256 of its file (the plan is tied to that exact model).
    beams : tuple of Beam
    bixels : tuple of BixelGrid
        One per beam.
    weights : tuple of np.ndarray
        Per beam, the bixel weights (MU-equivalent, all fractions together), in ``bixels`` order.
    dose : Volume
        The plan's dose (Gy, all fractions) on the dose grid, with that grid's geometry.
    order : MedicalOrder
    body : str
        Structure whose voxels get dose (the outline).
    """

    machine_id: str
    machine_hash: str
    beams: tuple[Beam, ...]
    bixels: tuple[BixelGrid, ...]
    weights: tuple[np.ndarray, ...]
    dose: Volume
    order: MedicalOrder
    body: str

    def __post_init__(self) -> None:
        if not (len(self.beams) == len(self.bixels) == len(self.weights)) or not self.beams:
            raise StandardPlanError(f"a standard plan needs one bixel grid and one weight vector per beam: "
                                    f"{len(self.beams)} beams, {len(self.bixels)} grids, {len(self.weights)} weight vectors")
        for n, (grid, w) in enumerate(zip(self.bixels, self.weights)):
            if np.asarray(w).size != grid.n_bixels:
                raise StandardPlanError(f"beam {n}: {np.asarray(w).size} weights for {grid.n_bixels} bixels")

    @classmethod
    def from_optimization(cls, machine: MachineModel, bixels: tuple[BixelGrid, ...], weights: np.ndarray,
                          dose_grid: Volume, dose_gy: np.ndarray, order: MedicalOrder, body: str) -> "StandardPlan":
        """Build it from the standard-plan chain's outputs (``DoseInfluence`` and ``FluenceResult``).

        Parameters
        ----------
        machine
            The standard machine.
        bixels
            ``DoseInfluence.bixels``.
        weights
            ``FluenceResult.weights`` (all beams, in column order).
        dose_grid
            ``DoseInfluence.dose_grid`` (its geometry is the dose's).
        dose_gy
            ``FluenceResult.dose_gy`` (flat or shaped).
        order, body
        """
        weights = np.asarray(weights, dtype=np.float64).ravel()
        counts = np.cumsum([0] + [b.n_bixels for b in bixels])
        if counts[-1] != weights.size:
            raise StandardPlanError(f"{weights.size} weights for {counts[-1]} bixels of {len(bixels)} beams")
        dose = dose_grid.with_voxels(np.asarray(dose_gy, dtype=np.float32).reshape(dose_grid.shape))
        return cls(machine.id, machine.content_hash, tuple(b.beam for b in bixels), tuple(bixels),
                   tuple(weights[counts[n]:counts[n + 1]] for n in range(len(bixels))), dose, order, body)

    def to_bytes(self) -> bytes:
        """The plan as an ``.npz`` archive (arrays plus a JSON ``meta``), loadable without pickle."""
        meta = {
            "format": FORMAT,
            "machine_id": self.machine_id,
            "machine_hash": self.machine_hash,
            "body": self.body,
            "beams": [{"gantry_deg": b.gantry_deg, "couch_deg": b.couch_deg, "collimator_deg": b.collimator_deg,
                       "isocenter_mm": b.isocenter_mm.tolist(), "patient_position": b.patient_position} for b in self.beams],
            "bixels": [{"bixel_mm": g.bixel_mm, "sad_mm": g.sad_mm} for g in self.bixels],
            "order": {"prescription": asdict(self.order.prescription),
                      "lower_levels": [asdict(level) for level in self.order.lower_levels],
                      "constraints": [asdict(c) for c in self.order.constraints],
                      "name": self.order.name, "source": self.order.source},
        }
        arrays = {
            "meta": np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8),
            "dose_gy": self.dose.voxels.astype(np.float32),
            "dose_origin_mm": self.dose.origin_mm,
            "dose_spacing_mm": self.dose.spacing_mm,
            "dose_direction": self.dose.direction,
        }
        for n, (grid, w) in enumerate(zip(self.bixels, self.weights)):
            arrays[f"beam{n}_ix"] = grid.ix
            arrays[f"beam{n}_iy"] = grid.iy
            arrays[f"beam{n}_weights"] = np.asarray(w, dtype=np.float64)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "StandardPlan":
        """Read :meth:`to_bytes` output.

        Raises
        ------
        StandardPlanError
            Not an archive of this format, or a part is missing.
        """
        try:
            archive = np.load(io.BytesIO(data), allow_pickle=False)
            meta = json.loads(archive["meta"].tobytes().decode("utf-8"))
        except (ValueError, OSError, KeyError, json.JSONDecodeError) as exc:
            raise StandardPlanError(f"not a standard plan archive: {exc}") from exc
        if meta.get("format") != FORMAT:
            raise StandardPlanError(f"standard plan archive has format {meta.get('format')!r}, expected {FORMAT!r}")
        try:
            beams = tuple(Beam(b["gantry_deg"], b["couch_deg"], b["collimator_deg"], np.asarray(b["isocenter_mm"]),
                               b["patient_position"]) for b in meta["beams"])
            bixels = tuple(BixelGrid(beam, g["bixel_mm"], g["sad_mm"], archive[f"beam{n}_ix"], archive[f"beam{n}_iy"])
                           for n, (beam, g) in enumerate(zip(beams, meta["bixels"])))
            weights = tuple(archive[f"beam{n}_weights"] for n in range(len(beams)))
            dose = Volume(archive["dose_gy"], archive["dose_origin_mm"], archive["dose_spacing_mm"], archive["dose_direction"])
            o = meta["order"]
            order = MedicalOrder(Prescription(**o["prescription"]), tuple(Constraint(**c) for c in o["constraints"]),
                                 name=o["name"], source=o["source"],
                                 lower_levels=tuple(Prescription(**level) for level in o.get("lower_levels", [])))
        except KeyError as exc:
            raise StandardPlanError(f"standard plan archive lacks {exc}") from exc
        return cls(meta["machine_id"], meta["machine_hash"], beams, bixels, weights, dose, order, meta["body"])
