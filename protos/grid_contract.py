"""The contract between the master and its agents on Ray, written once for both sides.

The gRPC contract with hospitals and operators lives in ``rtgrid/v1/*.proto``. The master and the
agents also meet on Ray: the master looks up each agent's named actor and asks it to run shard
tasks by name, and the agents hand back results that may publish files. Both sides import the
names and conventions of that meeting from here, so that they cannot drift apart (the master never
imports agent code, nor the agent master code).

Shard results
-------------
A shard result is a dict of arrays, bytes and JSON values. Files for the job's user are listed
under ``"artifacts"`` (``{"name", "kind", "modality"}``), their bytes under ``file_key(name)``
(:func:`publishing` builds such a result). The master stores each file once, by content hash:
before it stores the result it takes the bytes out and writes each file's ``sha256`` and
``size`` into its entry under ``"artifacts"`` (:func:`detach_files`); job kinds read a file of an
earlier stage from the blob store by that hash (:func:`stored_file_sha256`).

Typed calls and results
-----------------------
Every task's arguments are one frozen dataclass here (:class:`ContourSlabCall` ...); the master
builds it, the agent rebuilds it from the keyword arguments that crossed Ray
(:func:`shard_call_from`, which names an unknown or missing argument) and its executor takes it.
Results that the master reads back have one too (:class:`PlanSetup` ...): ``to_result`` gives the
flat dict of arrays, bytes and JSON values that is stored, ``from_result`` reads it (also from a
result stored by an earlier version of the grid, whose keys are the same).

Shared inputs
-------------
An argument several shards take (a plan's setup: density grid and masks, for every beam's shard,
the optimization and every device's conversion) is given as a :class:`SharedInput`: the master
puts its value into Ray's object store once and every call refers to it; the executor receives
the value itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from enum import StrEnum
from typing import Any, ClassVar

RAY_NAMESPACE = "rtgrid"
"""The Ray namespace of every named rtgrid actor."""

FILE_PREFIX = "file:"


class Task(StrEnum):
    """Shard tasks an agent runs; the value is the name that travels to the agent."""

    CONTOUR_SLAB = "contour.slab"
    CONTOUR_SEGMENT = "contour.segment"  # on a segmentation model's warm actor
    CONTOUR_MERGE = "contour.merge"
    PLAN_SETUP = "plan.setup"
    PLAN_BEAM_DIJ = "plan.beam_dij"
    PLAN_OPTIMIZE = "plan.optimize"
    PLAN_CONVERT_DEVICE = "plan.convert_device"
    PREDICT_DOSE = "predict.dose"
    REGISTER_SERIES = "register.series"


@dataclass(frozen=True)
class SharedInput:
    """A shard argument that many shards take, loaded and put into Ray's object store once.

    Attributes
    ----------
    key : str
        Names the value for as long as it lives (a content hash serves best).
    load : callable
        Returns the value; called only when the master does not hold it under ``key`` already.
    """

    key: str
    load: Callable[[], Any]


def agent_actor_name(agent_id: str) -> str:
    """The name of an agent's shard-worker actor (detached, in :data:`RAY_NAMESPACE`)."""
    return f"rtgrid-agent-{agent_id}"


def model_actor_name(agent_id: str, sha256: str) -> str:
    """The name of the warm actor that serves model ``sha256`` (a package hash) on an agent."""
    return f"rtgrid-model-{agent_id}-{sha256[:16]}"


@dataclass(frozen=True)
class Artifact:
    """A file a shard publishes to the job's user.

    Attributes
    ----------
    name : str
        File name the user downloads (``RD.standard.dcm``).
    kind : str
        What it is for the grid (``rtdose``, ``rtplan``, ``report``, ``image`` ...).
    modality : str
        DICOM modality, ``""`` for other files.
    data : bytes
    """

    name: str
    kind: str
    modality: str
    data: bytes


def file_key(name: str) -> str:
    """The result key of a published file's bytes."""
    return FILE_PREFIX + name


def publishing(*artifacts: Artifact) -> dict[str, Any]:
    """A shard result that publishes ``artifacts`` (more keys may be added to it)."""
    result: dict[str, Any] = {"artifacts": [{"name": a.name, "kind": a.kind, "modality": a.modality} for a in artifacts]}
    result.update({file_key(a.name): a.data for a in artifacts})
    return result


def published(result: Mapping[str, Any]) -> list[Artifact]:
    """The files a shard result (as the agent returned it) publishes, in its order.

    Raises
    ------
    KeyError
        A listed file without its bytes.
    """
    return [Artifact(spec["name"], spec["kind"], spec.get("modality", ""), result[file_key(spec["name"])])
            for spec in result.get("artifacts", [])]


def detach_files(result: Mapping[str, Any], store: Callable[[bytes], str]) -> dict[str, Any]:
    """The result to keep: each published file stored with ``store`` (bytes -> sha256), its bytes
    taken out and its ``sha256`` and ``size`` (bytes) added to its entry under ``"artifacts"``."""
    kept = {k: v for k, v in result.items() if not k.startswith(FILE_PREFIX) and k != "artifacts"}
    kept["artifacts"] = [{"name": a.name, "kind": a.kind, "modality": a.modality, "sha256": store(a.data),
                          "size": len(a.data)} for a in published(result)]
    return kept


def stored_file_sha256(result: Mapping[str, Any], name: str) -> str:
    """The sha256 of a file a stored result (:func:`detach_files`) published.

    Raises
    ------
    KeyError
        The result published no file ``name``.
    """
    for spec in result.get("artifacts", []):
        if spec["name"] == name and "sha256" in spec:
            return spec["sha256"]
    raise KeyError(f"the shard result published no file {name!r}; it has {[s['name'] for s in result.get('artifacts', [])]}")


# --- Typed shard calls -----------------------------------------------------------------------
# Arrays are numpy arrays, ``series`` an ``engines.imaging.volume.ImageSeries``; an argument that
# many shards share may be a :class:`SharedInput` on the master, and is its value on the agent.


class ShardArgs:
    """Base of the typed calls: ``task`` names the executor, the fields are its arguments."""

    task: ClassVar[Task]

    def kwargs(self) -> dict[str, Any]:
        """The fields as keyword arguments (shallow: arrays are not copied)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]


@dataclass(frozen=True)
class ContourSlabCall(ShardArgs):
    """Classical structures of one z-slab: ``hu`` holds the slab's slices with their halo."""

    task: ClassVar[Task] = Task.CONTOUR_SLAB
    hu: Any
    spacing_mm: Any
    direction: Any
    slab: Any  # engines.segmentation.classical.Slab


@dataclass(frozen=True)
class ContourSegmentCall(ShardArgs):
    """A batch of axial slices (HU) for a segmentation model's warm actor."""

    task: ClassVar[Task] = Task.CONTOUR_SEGMENT
    hu: Any
    spacing_mm: Any
    direction: Any


@dataclass(frozen=True)
class ContourMergeCall(ShardArgs):
    """The slab results (:class:`ContourSlabResult` dicts), the model label slabs per model, the
    user's drawn structures to complete (``assist``) and the models ruled out for this CT."""

    task: ClassVar[Task] = Task.CONTOUR_MERGE
    slab_results: list[dict[str, Any]]
    series: Any
    model_results: list[dict[str, Any]] = field(default_factory=list)
    assist: dict[str, Any] | None = None
    skipped_models: list[dict[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class PlanSetupCall(ShardArgs):
    """Density and structures on the dose grid (mm), beams (degrees) and their bixels (mm)."""

    task: ClassVar[Task] = Task.PLAN_SETUP
    series: Any
    rtstructs: list[bytes]
    order_text: str
    machine_id: str
    gantry_angles_deg: list[float]
    bixel_mm: float
    dose_grid_mm: float
    body: str


@dataclass(frozen=True)
class BeamDijCall(ShardArgs):
    """The dose influence matrix of beam ``beam_index`` of the set-up (a :class:`PlanSetup` result)."""

    task: ClassVar[Task] = Task.PLAN_BEAM_DIJ
    setup: Any
    beam_index: int
    machine_id: str


@dataclass(frozen=True)
class PlanOptimizeCall(ShardArgs):
    """Optimize the standard plan on every beam's matrix (:class:`BeamDij` results); ``dose_model``
    (``NAME@VERSION:SHA256``) is the dose prediction model of an order with ``goals: predicted``."""

    task: ClassVar[Task] = Task.PLAN_OPTIMIZE
    setup: Any
    beams: list[dict[str, Any]]
    series: Any
    rtstructs: list[bytes]
    order_text: str
    machine_id: str
    dose_model: str = ""


@dataclass(frozen=True)
class ConvertDeviceCall(ShardArgs):
    """One device's plan from the standard plan (``standard-plan.npz`` bytes) on its set-up."""

    task: ClassVar[Task] = Task.PLAN_CONVERT_DEVICE
    setup: Any
    standard_plan: bytes
    series: Any
    device_name: str
    model_id: str
    rtstruct_uid: str


@dataclass(frozen=True)
class PredictDoseCall(ShardArgs):
    """The 3-D dose the built-in model ``model`` predicts for the case's CT, structures and order."""

    task: ClassVar[Task] = Task.PREDICT_DOSE
    series: Any
    rtstructs: list[bytes]
    order_text: str
    body: str
    model: str


@dataclass(frozen=True)
class RegisterSeriesCall(ShardArgs):
    """Register the ``moving`` MR or PET series to the planning CT ``fixed`` (rigid, then B-spline
    when ``deformable``); ``name`` is the stem of the published files (``REG.<name>.dcm`` ...).
    ``rtstructs``: structure sets (DICOM bytes) drawn on ``moving``'s frame of reference, mapped onto
    the CT and published as ``RS.<name>.mapped.dcm``."""

    task: ClassVar[Task] = Task.REGISTER_SERIES
    fixed: Any
    moving: Any
    name: str
    deformable: bool = False
    rtstructs: tuple[bytes, ...] = ()


CALL_TYPES: dict[Task, type[ShardArgs]] = {cls.task: cls for cls in (
    ContourSlabCall, ContourSegmentCall, ContourMergeCall, PlanSetupCall, BeamDijCall, PlanOptimizeCall,
    ConvertDeviceCall, PredictDoseCall, RegisterSeriesCall)}


def shard_call_from(task: str, kwargs: Mapping[str, Any]) -> ShardArgs:
    """The typed call of ``task`` from the keyword arguments that crossed Ray.

    Raises
    ------
    KeyError
        ``task`` is not a task of this contract (an agent older than its master).
    TypeError
        An argument the call does not take, or one it needs that is missing, named.
    """
    try:
        cls = CALL_TYPES[Task(task)]
    except ValueError:
        raise KeyError(f"no shard task {task!r} in this grid contract; known: {sorted(CALL_TYPES)}") from None
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}  # type: ignore[arg-type]
    unknown, missing = sorted(set(kwargs) - names), sorted(required - set(kwargs))
    if unknown or missing:
        raise TypeError(f"shard task {task!r}: unknown arguments {unknown}, missing arguments {missing}")
    return cls(**kwargs)


# --- Typed shard results ---------------------------------------------------------------------


@dataclass(frozen=True)
class ContourSlabResult:
    """Classical structures of one slab: the slab (its fields) and the packed structure bits."""

    slab: dict[str, Any]
    bits: Any

    def to_result(self) -> dict[str, Any]:
        return {"slab": self.slab, "bits": self.bits}

    @classmethod
    def from_result(cls, result: Mapping[str, Any]) -> "ContourSlabResult":
        return cls(result["slab"], result["bits"])


@dataclass(frozen=True)
class SegmentResult:
    """A model's uint8 labels of the slab (its shape) and the serving actor's statistics."""

    labels: Any
    actor: dict[str, Any]

    def to_result(self) -> dict[str, Any]:
        return {"labels": self.labels, "actor": self.actor}

    @classmethod
    def from_result(cls, result: Mapping[str, Any]) -> "SegmentResult":
        return cls(result["labels"], result["actor"])


@dataclass(frozen=True)
class PlanSetup:
    """A plan's set-up on the dose grid (LPS, mm): relative electron density, masks, beams, bixels.

    Attributes
    ----------
    density : np.ndarray
        ``(nz, ny, nx)`` relative electron density on the dose grid.
    origin_mm, spacing_mm : list of float
        The dose grid's origin and spacing (x, y, z).
    direction : list of list of float
        Its 3 x 3 direction cosines.
    masks : dict of str to np.ndarray
        Every structure of the order and the body, on the dose grid.
    isocenter_mm : list of float
        The beams' isocentre.
    gantry_deg : list of float
        One entry per beam.
    bixel_mm, sad_mm : float
        Bixel size at the isocentre and the machine's source-axis distance.
    body : str
        The body structure's name (a key of ``masks``).
    rtstruct_uid : str
        SOP Instance UID of the structure set the plan is made on.
    bixels : list of (np.ndarray, np.ndarray)
        Per beam, the bixels' column and row indices on its fluence grid.
    """

    density: Any
    origin_mm: list[float]
    spacing_mm: list[float]
    direction: list[list[float]]
    masks: dict[str, Any]
    isocenter_mm: list[float]
    gantry_deg: list[float]
    bixel_mm: float
    sad_mm: float
    body: str
    rtstruct_uid: str
    bixels: list[tuple[Any, Any]]

    def to_result(self) -> dict[str, Any]:
        """The flat result the codec stores: masks as ``mask:NAME``, bixels as ``ix:B``/``iy:B``."""
        result: dict[str, Any] = {
            "density": self.density, "origin_mm": list(self.origin_mm), "spacing_mm": list(self.spacing_mm),
            "direction": [list(row) for row in self.direction], "structures": sorted(self.masks),
            "isocenter_mm": list(self.isocenter_mm), "gantry_deg": list(self.gantry_deg), "bixel_mm": self.bixel_mm,
            "sad_mm": self.sad_mm, "body": self.body, "rtstruct_uid": self.rtstruct_uid,
        }
        result.update({f"mask:{name}": mask for name, mask in self.masks.items()})
        for b, (ix, iy) in enumerate(self.bixels):
            result[f"ix:{b}"], result[f"iy:{b}"] = ix, iy
        return result

    @classmethod
    def from_result(cls, result: Mapping[str, Any]) -> "PlanSetup":
        beams = len(result["gantry_deg"])
        return cls(result["density"], list(result["origin_mm"]), list(result["spacing_mm"]), result["direction"],
                   {name: result[f"mask:{name}"] for name in result["structures"]}, list(result["isocenter_mm"]),
                   [float(g) for g in result["gantry_deg"]], float(result["bixel_mm"]), float(result["sad_mm"]),
                   result["body"], result["rtstruct_uid"], [(result[f"ix:{b}"], result[f"iy:{b}"]) for b in range(beams)])


@dataclass(frozen=True)
class BeamDij:
    """One beam's dose influence matrix in CSR parts (rows: dose-grid voxels; Gy per unit weight)."""

    data: Any
    indices: Any
    indptr: Any
    shape: list[int]
    beam_index: int

    def to_result(self) -> dict[str, Any]:
        return {"data": self.data, "indices": self.indices, "indptr": self.indptr, "shape": list(self.shape),
                "beam_index": self.beam_index}

    @classmethod
    def from_result(cls, result: Mapping[str, Any]) -> "BeamDij":
        return cls(result["data"], result["indices"], result["indptr"], list(result["shape"]), int(result["beam_index"]))


@dataclass(frozen=True)
class PlanOptimizeResult:
    """Whether the standard plan passed its release check, why not, and its files."""

    plan_released: bool
    plan_reasons: list[str]
    files: tuple[Artifact, ...] = ()

    def to_result(self) -> dict[str, Any]:
        return publishing(*self.files) | {"plan_released": self.plan_released, "plan_reasons": list(self.plan_reasons)}

    @classmethod
    def from_result(cls, result: Mapping[str, Any]) -> "PlanOptimizeResult":
        """Its verdict (the files of a stored result are in the blob store, see :func:`stored_file_sha256`)."""
        return cls(bool(result["plan_released"]), list(result["plan_reasons"]))


@dataclass(frozen=True)
class DevicePlanResult:
    """One device's plan: whether QA released it, why not, and its files."""

    device: str
    qa_passed: bool
    qa_reasons: list[str]
    files: tuple[Artifact, ...] = ()

    def to_result(self) -> dict[str, Any]:
        return publishing(*self.files) | {"device": self.device, "qa_passed": self.qa_passed,
                                          "qa_reasons": list(self.qa_reasons)}

    @classmethod
    def from_result(cls, result: Mapping[str, Any]) -> "DevicePlanResult":
        """Its verdict (the files of a stored result are in the blob store)."""
        return cls(result["device"], bool(result["qa_passed"]), list(result["qa_reasons"]))
