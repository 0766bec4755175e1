"""DICOM RT Plan: write a photon MLC plan, read any static / dynamic MLCX plan back, and map its fluence.

The written object is a complete RT Plan IOD (Patient, General Study, RT Series, Frame of
Reference, General Equipment, RT General Plan, RT Prescription, RT Patient Setup, RT Fraction
Scheme, RT Beams, SOP Common) filed under the CT's patient, study and Frame of Reference, with
``RTPlanGeometry = PATIENT`` and a reference to the structure set the plan was made on.

Beam-limiting devices per beam: asymmetric jaws ``ASYMX`` / ``ASYMY`` and one multileaf collimator
``MLCX`` (leaves move along IEC ``X_b``; leaf-pair boundaries along ``Y_b``). All positions are mm
in the isocenter plane, in IEC BEAM LIMITING DEVICE coordinates. Leaf/Jaw Positions of an MLC list
bank X1 (the negative side, leaves 101..1N) and then bank X2 (201..2N), each in leaf-boundary order.

Delivery: control point ``n`` holds the aperture when the cumulative meterset weight reaches
``w[n]``; between two control points every leaf and jaw moves linearly in meterset. A
step-and-shoot segment is a pair of control points with the same aperture and increasing
weight; a sliding window moves leaves between weights; equal weights with different apertures
are beam-off transitions.

Numbers are written as their shortest exact decimal when it fits the 16 characters of a DICOM
DS, else with as many significant digits as fit: read back, positions of up to ~12 significant
digits are exact, others within 1e-9 mm, and cumulative weights (ratios of MU) within 1e-14.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import RE_VALID_UID, generate_uid

from rtgrid.engines.dicomrt.common import new_rt_dataset
from rtgrid.engines.errors import EngineError
from rtgrid.engines.imaging.volume import ImageSeries

RT_PLAN_STORAGE = "1.2.840.10008.5.1.4.1.1.481.5"
RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
BEAM_KINDS = frozenset({"STATIC", "DYNAMIC"})
PATIENT_POSITIONS = frozenset({"HFS", "HFP", "FFS", "FFP", "HFDR", "HFDL", "FFDR", "FFDL"})
X_JAW_TYPES = ("ASYMX", "X")
Y_JAW_TYPES = ("ASYMY", "Y")
MLC_TYPE = "MLCX"
WEIGHT_TOLERANCE = 1e-9
"""How far the first / last cumulative meterset weight may sit from 0 / 1."""
POSITION_TOLERANCE_MM = 1e-6
"""Apertures closer than this are the same aperture (step-and-shoot pairs, STATIC beams)."""


class RtPlanError(EngineError, ValueError):
    """An RT Plan cannot be written or read as asked; the message names the beam, control point and value."""


@dataclass(frozen=True)
class ControlPoint:
    """The aperture of one control point.

    Attributes
    ----------
    leaf_positions_mm : np.ndarray
        ``(2, n_pairs)`` float64: row 0 bank X1 (negative side), row 1 bank X2, in leaf-boundary
        order; mm at the isocenter plane. Stored read-only.
    jaw_x_mm : tuple[float, float]
        ``(X1, X2)`` jaw positions, mm.
    jaw_y_mm : tuple[float, float]
        ``(Y1, Y2)`` jaw positions, mm.
    cumulative_weight : float
        Cumulative meterset weight, 0 at the first control point and 1 at the last.
    """

    leaf_positions_mm: np.ndarray
    jaw_x_mm: tuple[float, float]
    jaw_y_mm: tuple[float, float]
    cumulative_weight: float

    def __post_init__(self) -> None:
        leaves = np.array(self.leaf_positions_mm, dtype=np.float64)
        if leaves.ndim != 2 or leaves.shape[0] != 2:
            raise RtPlanError(f"leaf_positions_mm must have shape (2, n_pairs), got {leaves.shape}")
        leaves.setflags(write=False)
        object.__setattr__(self, "leaf_positions_mm", leaves)
        object.__setattr__(self, "jaw_x_mm", tuple(float(v) for v in self.jaw_x_mm))
        object.__setattr__(self, "jaw_y_mm", tuple(float(v) for v in self.jaw_y_mm))
        object.__setattr__(self, "cumulative_weight", float(self.cumulative_weight))


@dataclass(frozen=True)
class PlanBeam:
    """One treatment beam: fixed gantry, collimator and couch; an MLC aperture sequence.

    Attributes
    ----------
    name : str
        Beam Name (at most 64 characters, unique in the plan).
    number : int
        Beam Number (unique, positive).
    gantry_deg, collimator_deg, couch_deg : float
        IEC 61217 angles in [0, 360).
    isocenter_mm : tuple[float, float, float]
        LPS mm.
    control_points : tuple[ControlPoint, ...]
        At least two, cumulative weights non-decreasing from 0 to 1.
    meterset_mu : float
        Beam Meterset per fraction, MU.
    kind : str
        Beam Type: ``"STATIC"`` (one aperture) or ``"DYNAMIC"`` (step-and-shoot or sliding window).
    nominal_energy_mv : float
        Nominal Beam Energy, MV (plans may mix energies).
    """

    name: str
    number: int
    gantry_deg: float
    collimator_deg: float
    couch_deg: float
    isocenter_mm: tuple[float, float, float]
    control_points: tuple[ControlPoint, ...]
    meterset_mu: float
    kind: str = "STATIC"
    nominal_energy_mv: float = 6.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "isocenter_mm", tuple(float(v) for v in self.isocenter_mm))
        object.__setattr__(self, "control_points", tuple(self.control_points))
        for angle in ("gantry_deg", "collimator_deg", "couch_deg", "meterset_mu", "nominal_energy_mv"):
            object.__setattr__(self, angle, float(getattr(self, angle)))


@dataclass(frozen=True)
class PlanData:
    """A photon MLC plan as rtgrid writes and reads it.

    Attributes
    ----------
    label : str
        RT Plan Label (1 to 16 characters).
    machine_name : str
        Treatment Machine Name of every beam (SH: at most 16 characters), the name the linac's
        record-and-verify system knows.
    leaf_boundaries_mm : tuple[float, ...]
        ``n_pairs + 1`` increasing leaf-pair edges along ``Y_b``, mm at the isocenter plane.
    beams : tuple[PlanBeam, ...]
    prescription_gy : float or None
        Target Prescription Dose over all fractions, Gy; ``None`` when the plan states none.
    fractions : int
        Number of Fractions Planned.
    referenced_rtstruct_uid : str or None
        SOP Instance UID of the RT Structure Set the plan was made on.
    sad_mm : float
        Source-axis distance of the machine.
    patient_position : str
        Patient Position of the setup (``"HFS"`` for every plan rtgrid makes).
    machine_model_id : str
        The machine model the plan was computed for (e.g. an rtgrid machine id, at most 64
        characters), written as every beam's Manufacturer's Model Name; ``""`` when unknown.
    """

    label: str
    machine_name: str
    leaf_boundaries_mm: tuple[float, ...]
    beams: tuple[PlanBeam, ...]
    prescription_gy: float | None
    fractions: int
    referenced_rtstruct_uid: str | None = None
    sad_mm: float = 1000.0
    patient_position: str = "HFS"
    machine_model_id: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "leaf_boundaries_mm", tuple(float(v) for v in self.leaf_boundaries_mm))
        object.__setattr__(self, "beams", tuple(self.beams))
        object.__setattr__(self, "fractions", int(self.fractions))
        if self.prescription_gy is not None:
            object.__setattr__(self, "prescription_gy", float(self.prescription_gy))

    @property
    def n_pairs(self) -> int:
        return len(self.leaf_boundaries_mm) - 1


@dataclass(frozen=True)
class FluenceMap:
    """The MU delivered through each point of a beam's eye view.

    Attributes
    ----------
    fluence_mu : np.ndarray
        ``(ny, nx)`` float64: meterset (MU per fraction) delivered through the point at
        ``(x_mm[i], y_mm[j])``; no leaf transmission, no tongue-and-groove.
    x_mm : np.ndarray
        ``(nx,)`` pixel centres along ``X_b`` (leaf motion), mm at the isocenter plane.
    y_mm : np.ndarray
        ``(ny,)`` pixel centres along ``Y_b`` (across leaf pairs), increasing.
    resolution_mm : float
        Pixel pitch; pixel edges fall on multiples of it.
    meterset_mu : float
        The beam's meterset: the largest value the map can reach.
    """

    fluence_mu: np.ndarray
    x_mm: np.ndarray
    y_mm: np.ndarray
    resolution_mm: float
    meterset_mu: float


def step_and_shoot_control_points(
    leaf_positions_mm: Sequence[np.ndarray],
    jaw_x_mm: Sequence[tuple[float, float]],
    jaw_y_mm: Sequence[tuple[float, float]],
    segment_mu: Sequence[float],
) -> tuple[tuple[ControlPoint, ...], float]:
    """Control points that deliver segments one after the other (beam off while leaves move).

    Parameters
    ----------
    leaf_positions_mm : Sequence[np.ndarray]
        Per segment, ``(2, n_pairs)`` leaf positions (bank X1, bank X2).
    jaw_x_mm, jaw_y_mm : Sequence[tuple[float, float]]
        Per segment, the jaw positions.
    segment_mu : Sequence[float]
        Per segment, its MU (> 0).

    Returns
    -------
    control_points : tuple[ControlPoint, ...]
        Two per segment, same aperture, cumulative weights rising by ``mu / total``.
    meterset_mu : float
        The total MU, the beam meterset.

    Raises
    ------
    RtPlanError
        No segments, lists of different lengths, or a segment MU that is not positive.
    """
    n = len(segment_mu)
    if n == 0 or not (len(leaf_positions_mm) == len(jaw_x_mm) == len(jaw_y_mm) == n):
        raise RtPlanError(
            f"step-and-shoot needs one leaf set, X jaws, Y jaws and MU per segment; got {len(leaf_positions_mm)}, "
            f"{len(jaw_x_mm)}, {len(jaw_y_mm)} and {n}"
        )
    mu = np.asarray(segment_mu, dtype=np.float64)
    if not np.all(np.isfinite(mu)) or np.any(mu <= 0):
        raise RtPlanError(f"segment MU must be finite and > 0, got {mu.tolist()}")
    total = float(mu.sum())
    edges = np.concatenate([[0.0], np.cumsum(mu) / total])
    edges[-1] = 1.0
    points = []
    for s in range(n):
        for weight in (edges[s], edges[s + 1]):
            points.append(ControlPoint(leaf_positions_mm[s], jaw_x_mm[s], jaw_y_mm[s], float(weight)))
    return tuple(points), total


def write_rtplan(
    plan: PlanData,
    series: ImageSeries,
    *,
    rtstruct_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> Dataset:
    """Build an RT Plan that files under ``series``' patient, study and Frame of Reference.

    Parameters
    ----------
    plan : PlanData
        The plan; every beam uses the plan's machine, SAD and leaf boundaries.
    series : ImageSeries
        The CT the plan was made on.
    rtstruct_uid : str, optional
        SOP Instance UID of the structure set; defaults to ``plan.referenced_rtstruct_uid``.
        One of the two is required: RT Plan Geometry PATIENT makes the Referenced Structure Set
        Sequence mandatory.
    sop_instance_uid : str, optional
        The plan's SOP Instance UID, when it was generated earlier (e.g. for an RT Dose that
        references this plan); a new UID otherwise.

    Returns
    -------
    pydicom.Dataset
        With file meta (explicit VR little endian); save with ``ds.save_as(path, enforce_file_format=True)``.

    Raises
    ------
    RtPlanError
        An invalid plan (the message names the beam and control point), conflicting or missing
        structure set UIDs, a malformed UID, or a series without study or Frame of Reference UID.
    """
    _check_plan(plan)
    if rtstruct_uid is not None and plan.referenced_rtstruct_uid not in (None, rtstruct_uid):
        raise RtPlanError(
            f"rtstruct_uid {rtstruct_uid!r} differs from the plan's referenced_rtstruct_uid "
            f"{plan.referenced_rtstruct_uid!r}"
        )
    structure_uid = rtstruct_uid if rtstruct_uid is not None else plan.referenced_rtstruct_uid
    if structure_uid is None:
        raise RtPlanError(
            "RT Plan Geometry PATIENT requires the structure set the plan was made on: pass rtstruct_uid "
            "or set plan.referenced_rtstruct_uid"
        )
    _check_uid("rtstruct_uid", structure_uid)
    if sop_instance_uid is not None:
        _check_uid("sop_instance_uid", sop_instance_uid)
    for uid_name in ("study_instance_uid", "frame_of_reference_uid"):
        if not getattr(series, uid_name):
            raise RtPlanError(f"series has an empty {uid_name}; the RT Plan could not be filed under it")

    ds = new_rt_dataset(series, RT_PLAN_STORAGE, "RTPLAN", sop_instance_uid)
    ds.InstanceNumber = 1
    # Frame of Reference: the CT's, so the isocenters are in the CT's coordinates.
    ds.FrameOfReferenceUID = series.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    # RT General Plan.
    ds.RTPlanLabel = plan.label
    ds.RTPlanDate, ds.RTPlanTime = ds.InstanceCreationDate, ds.InstanceCreationTime
    ds.RTPlanGeometry = "PATIENT"
    structure_set = Dataset()
    structure_set.ReferencedSOPClassUID = RT_STRUCTURE_SET_STORAGE
    structure_set.ReferencedSOPInstanceUID = structure_uid
    ds.ReferencedStructureSetSequence = DicomSequence([structure_set])
    # RT Prescription: the total target dose, so the plan carries its own goal.
    if plan.prescription_gy is not None:
        target = Dataset()
        target.DoseReferenceNumber = 1
        target.DoseReferenceUID = generate_uid()
        target.DoseReferenceStructureType = "SITE"
        target.DoseReferenceDescription = "Target"
        target.DoseReferenceType = "TARGET"
        target.TargetPrescriptionDose = _ds(plan.prescription_gy)
        ds.DoseReferenceSequence = DicomSequence([target])
    # RT Patient Setup.
    setup = Dataset()
    setup.PatientSetupNumber = 1
    setup.PatientPosition = plan.patient_position
    ds.PatientSetupSequence = DicomSequence([setup])
    # RT Fraction Scheme: one fraction group, each beam's meterset per fraction.
    group = Dataset()
    group.FractionGroupNumber = 1
    group.NumberOfFractionsPlanned = plan.fractions
    group.NumberOfBeams = len(plan.beams)
    group.NumberOfBrachyApplicationSetups = 0
    referenced_beams = []
    for beam in plan.beams:
        item = Dataset()
        item.ReferencedBeamNumber = beam.number
        item.BeamMeterset = _ds(beam.meterset_mu)
        referenced_beams.append(item)
    group.ReferencedBeamSequence = DicomSequence(referenced_beams)
    ds.FractionGroupSequence = DicomSequence([group])
    # RT Beams.
    ds.BeamSequence = DicomSequence([_beam_item(plan, beam) for beam in plan.beams])
    return ds


def read_rtplan(ds: Dataset) -> PlanData:
    """Read a photon MLCX plan (ours or another system's) with fixed gantry, collimator and couch per beam.

    Parameters
    ----------
    ds : pydicom.Dataset
        An RT Plan. Control points carry forward what they do not repeat (jaws, leaves, angles).

    Returns
    -------
    PlanData
        Beams in Beam Sequence order, metersets from the first (only) fraction group; the
        prescription is the first TARGET dose reference's Target Prescription Dose (``None``
        if there is none).

    Raises
    ------
    RtPlanError
        Not an RT Plan; several fraction groups; a beam without MLCX or jaws, with leaf
        boundaries that differ between beams, with moving gantry / collimator / couch (arcs),
        with weights that are not non-decreasing from 0 to the final weight, or without a
        meterset.
    """
    sop_class = str(ds.get("SOPClassUID", "") or "")
    if sop_class != RT_PLAN_STORAGE or "BeamSequence" not in ds:
        raise RtPlanError(
            f"dataset is not a photon RT Plan (SOP Class UID {sop_class!r}, BeamSequence "
            f"{'present' if 'BeamSequence' in ds else 'missing'})"
        )
    groups = list(ds.get("FractionGroupSequence", []))
    if len(groups) != 1:
        raise RtPlanError(f"RT Plan has {len(groups)} fraction groups; exactly one is supported")
    metersets = {}
    for item in groups[0].get("ReferencedBeamSequence", []):
        if item.get("BeamMeterset") is not None:
            metersets[int(item.ReferencedBeamNumber)] = float(item.BeamMeterset)
    prescription = None
    for reference in ds.get("DoseReferenceSequence", []):
        if reference.get("DoseReferenceType") == "TARGET" and reference.get("TargetPrescriptionDose") is not None:
            prescription = float(reference.TargetPrescriptionDose)
            break
    structure_uids = [str(s.ReferencedSOPInstanceUID) for s in ds.get("ReferencedStructureSetSequence", [])]
    setups = list(ds.get("PatientSetupSequence", []))
    patient_position = str(setups[0].get("PatientPosition", "") or "") if setups else ""

    boundaries: tuple[float, ...] | None = None
    machine_names, model_ids, sads, beams = set(), set(), set(), []
    for beam_ds in ds.BeamSequence:
        beam, beam_boundaries = _read_beam(beam_ds, metersets)
        if boundaries is None:
            boundaries = beam_boundaries
        elif beam_boundaries != boundaries:
            raise RtPlanError(f"beam {beam.name!r} has other MLC leaf boundaries than the first beam")
        machine_names.add(str(beam_ds.get("TreatmentMachineName", "") or ""))
        model_ids.add(str(beam_ds.get("ManufacturerModelName", "") or ""))
        sads.add(float(beam_ds.get("SourceAxisDistance", 1000.0) or 1000.0))
        beams.append(beam)
    if not beams or boundaries is None:
        raise RtPlanError("RT Plan has an empty Beam Sequence")
    for what, values in (("Treatment Machine Name", machine_names), ("Source Axis Distance", sads),
                         ("Manufacturer's Model Name", model_ids)):
        if len(values) != 1:
            raise RtPlanError(f"beams of one plan must share one {what}; found {sorted(values, key=str)}")
    return PlanData(
        label=str(ds.get("RTPlanLabel", "") or ""),
        machine_name=machine_names.pop(),
        leaf_boundaries_mm=boundaries,
        beams=tuple(beams),
        prescription_gy=prescription,
        fractions=int(groups[0].get("NumberOfFractionsPlanned", 1) or 1),
        referenced_rtstruct_uid=structure_uids[0] if structure_uids else None,
        sad_mm=sads.pop(),
        patient_position=patient_position,
        machine_model_id=model_ids.pop(),
    )


def beam_fluence_map(
    beam: PlanBeam,
    leaf_boundaries_mm: Sequence[float],
    resolution_mm: float = 1.0,
    *,
    extent_mm: tuple[float, float, float, float] | None = None,
) -> FluenceMap:
    """The MU delivered through each point of one beam's eye view.

    Every leaf and jaw moves linearly in meterset between control points, so each of the six
    edges that bound the aperture at a point (X1/X2 leaf, X1/X2 jaw, Y1/Y2 jaw) leaves the point
    open on one interval of the segment's meterset; the open fraction is the length of the
    intersection of those intervals. The integral is exact for step-and-shoot and sliding-window
    delivery alike, at the pixel centres.

    Parameters
    ----------
    beam : PlanBeam
    leaf_boundaries_mm : Sequence[float]
        The MLC's ``n_pairs + 1`` leaf-pair edges along ``Y_b``.
    resolution_mm : float
        Pixel pitch at the isocenter plane.
    extent_mm : (x_min, x_max, y_min, y_max), optional
        The area to map (widened to whole pixels); by default the largest jaw opening of the beam.

    Returns
    -------
    FluenceMap
        Points beyond the leaf bank along ``Y_b`` are collimated by the jaws alone.

    Raises
    ------
    RtPlanError
        A non-positive resolution, an empty extent, or leaf positions that do not match the
        leaf boundaries.
    """
    if not resolution_mm > 0:
        raise RtPlanError(f"resolution_mm must be > 0, got {resolution_mm}")
    bounds = np.asarray(leaf_boundaries_mm, dtype=np.float64)
    points = beam.control_points
    for index, cp in enumerate(points):
        if cp.leaf_positions_mm.shape[1] != bounds.size - 1:
            raise RtPlanError(
                f"beam {beam.name!r} control point {index}: {cp.leaf_positions_mm.shape[1]} leaf pairs, "
                f"but {bounds.size} leaf boundaries"
            )
    if extent_mm is None:
        jaws_x = np.array([cp.jaw_x_mm for cp in points])
        jaws_y = np.array([cp.jaw_y_mm for cp in points])
        extent_mm = (jaws_x[:, 0].min(), jaws_x[:, 1].max(), jaws_y[:, 0].min(), jaws_y[:, 1].max())
    if not (extent_mm[0] < extent_mm[1] and extent_mm[2] < extent_mm[3]):
        raise RtPlanError(f"extent_mm {tuple(extent_mm)} must be (x_min, x_max, y_min, y_max) with min < max")
    x0, y0 = (np.floor(v / resolution_mm) * resolution_mm for v in (extent_mm[0], extent_mm[2]))
    x1, y1 = (np.ceil(v / resolution_mm) * resolution_mm for v in (extent_mm[1], extent_mm[3]))
    x = x0 + resolution_mm * (np.arange(max(int(round((x1 - x0) / resolution_mm)), 1)) + 0.5)
    y = y0 + resolution_mm * (np.arange(max(int(round((y1 - y0) / resolution_mm)), 1)) + 0.5)
    # Leaf pair of every row; rows beyond the leaf bank are collimated by the jaws alone.
    pair = np.searchsorted(bounds, y, side="right") - 1
    in_mlc = (pair >= 0) & (pair < bounds.size - 1)
    pair = np.clip(pair, 0, bounds.size - 2)
    parked = (x[0] - resolution_mm, x[-1] + resolution_mm)  # leaf tips that never cover a pixel

    def leaf_edges(cp: ControlPoint, bank: int) -> np.ndarray:
        return np.where(in_mlc, cp.leaf_positions_mm[bank, pair], parked[bank])[:, None]

    fluence = np.zeros((y.size, x.size))
    for a, b in zip(points[:-1], points[1:]):
        delta = b.cumulative_weight - a.cumulative_weight
        if delta <= 0:
            continue
        lo = np.zeros((y.size, x.size))
        hi = np.ones((y.size, x.size))
        # Open while edge(t) < coordinate (lower edges) or coordinate < edge(t) (upper edges).
        for start, end, coordinate, lower in (
            (leaf_edges(a, 0), leaf_edges(b, 0), x[None, :], True),
            (leaf_edges(a, 1), leaf_edges(b, 1), x[None, :], False),
            (a.jaw_x_mm[0], b.jaw_x_mm[0], x[None, :], True),
            (a.jaw_x_mm[1], b.jaw_x_mm[1], x[None, :], False),
            (a.jaw_y_mm[0], b.jaw_y_mm[0], y[:, None], True),
            (a.jaw_y_mm[1], b.jaw_y_mm[1], y[:, None], False),
        ):
            lo, hi = _open_interval(lo, hi, start, end, coordinate, lower)
        fluence += delta * np.clip(hi - lo, 0.0, None)
    return FluenceMap(fluence * beam.meterset_mu, x, y, float(resolution_mm), beam.meterset_mu)


def plan_fluence_maps(ds: Dataset, resolution_mm: float = 1.0) -> dict[str, FluenceMap]:
    """The fluence map of every beam of an RT Plan.

    Parameters
    ----------
    ds : pydicom.Dataset
        An RT Plan that :func:`read_rtplan` reads (static or dynamic MLCX beams).
    resolution_mm : float
        Pixel pitch at the isocenter plane.

    Returns
    -------
    dict[str, FluenceMap]
        Beam name -> its map (MU per fraction), in beam order.

    Raises
    ------
    RtPlanError
        As :func:`read_rtplan` and :func:`beam_fluence_map`, or two beams with one name.
    """
    plan = read_rtplan(ds)
    maps: dict[str, FluenceMap] = {}
    for beam in plan.beams:
        if beam.name in maps:
            raise RtPlanError(f"two beams are named {beam.name!r}; fluence maps are keyed by beam name")
        maps[beam.name] = beam_fluence_map(beam, plan.leaf_boundaries_mm, resolution_mm)
    return maps


def _open_interval(
    lo: np.ndarray, hi: np.ndarray, start, end, coordinate: np.ndarray, lower: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Narrow ``[lo, hi]`` to the segment fraction ``t`` where the edge ``start + t (end - start)``
    lies below (``lower``) or above the coordinate."""
    start = np.asarray(start, dtype=np.float64)
    slope = np.asarray(end, dtype=np.float64) - start
    gap = coordinate - start if lower else start - coordinate  # open at t = 0 when gap > 0
    rate = -slope if lower else slope  # d(gap)/dt
    with np.errstate(divide="ignore", invalid="ignore"):
        crossing = np.where(rate != 0, -gap / rate, 0.0)
    # Static edge: open throughout or never. Moving edge: open after or before the crossing.
    static = rate == 0
    new_lo = np.where(static, np.where(gap > 0, 0.0, 1.0), np.where(rate > 0, crossing, 0.0))
    new_hi = np.where(static, np.where(gap > 0, 1.0, 0.0), np.where(rate > 0, 1.0, crossing))
    return np.maximum(lo, new_lo), np.minimum(hi, new_hi)


def _beam_item(plan: PlanData, beam: PlanBeam) -> Dataset:
    item = Dataset()
    item.BeamNumber = beam.number
    item.BeamName = beam.name
    item.BeamType = beam.kind
    item.RadiationType = "PHOTON"
    item.TreatmentDeliveryType = "TREATMENT"
    item.TreatmentMachineName = plan.machine_name
    if plan.machine_model_id:
        item.ManufacturerModelName = plan.machine_model_id
    item.PrimaryDosimeterUnit = "MU"
    item.SourceAxisDistance = _ds(plan.sad_mm)
    devices = []
    for device_type in ("ASYMX", "ASYMY"):
        device = Dataset()
        device.RTBeamLimitingDeviceType = device_type
        device.NumberOfLeafJawPairs = 1
        devices.append(device)
    mlc = Dataset()
    mlc.RTBeamLimitingDeviceType = MLC_TYPE
    mlc.NumberOfLeafJawPairs = plan.n_pairs
    mlc.LeafPositionBoundaries = [_ds(v) for v in plan.leaf_boundaries_mm]
    devices.append(mlc)
    item.BeamLimitingDeviceSequence = DicomSequence(devices)
    item.ReferencedPatientSetupNumber = 1
    item.NumberOfWedges = 0
    item.NumberOfCompensators = 0
    item.NumberOfBoli = 0
    item.NumberOfBlocks = 0
    item.FinalCumulativeMetersetWeight = "1"
    item.NumberOfControlPoints = len(beam.control_points)
    control_items = []
    previous: ControlPoint | None = None
    for index, cp in enumerate(beam.control_points):
        control = Dataset()
        control.ControlPointIndex = index
        if previous is None:
            control.NominalBeamEnergy = _ds(beam.nominal_energy_mv)
        # Beam-limiting devices on the first control point, then only where they change.
        positions = []
        for device_type, values, old in (
            ("ASYMX", cp.jaw_x_mm, None if previous is None else previous.jaw_x_mm),
            ("ASYMY", cp.jaw_y_mm, None if previous is None else previous.jaw_y_mm),
            (MLC_TYPE, tuple(cp.leaf_positions_mm.ravel()),
             None if previous is None else tuple(previous.leaf_positions_mm.ravel())),
        ):
            if values != old:
                position = Dataset()
                position.RTBeamLimitingDeviceType = device_type
                position.LeafJawPositions = [_ds(v) for v in values]
                positions.append(position)
        if positions:
            control.BeamLimitingDevicePositionSequence = DicomSequence(positions)
        if previous is None:
            control.GantryAngle = _ds(beam.gantry_deg)
            control.GantryRotationDirection = "NONE"
            control.BeamLimitingDeviceAngle = _ds(beam.collimator_deg)
            control.BeamLimitingDeviceRotationDirection = "NONE"
            control.PatientSupportAngle = _ds(beam.couch_deg)
            control.PatientSupportRotationDirection = "NONE"
            control.TableTopEccentricAngle = "0"
            control.TableTopEccentricRotationDirection = "NONE"
            control.TableTopPitchAngle = 0.0
            control.TableTopPitchRotationDirection = "NONE"
            control.TableTopRollAngle = 0.0
            control.TableTopRollRotationDirection = "NONE"
            control.TableTopVerticalPosition = None
            control.TableTopLongitudinalPosition = None
            control.TableTopLateralPosition = None
            control.IsocenterPosition = [_ds(v) for v in beam.isocenter_mm]
        control.CumulativeMetersetWeight = "1" if index == len(beam.control_points) - 1 else _ds(cp.cumulative_weight)
        control_items.append(control)
        previous = cp
    item.ControlPointSequence = DicomSequence(control_items)
    return item


def _read_beam(beam_ds: Dataset, metersets: dict[int, float]) -> tuple[PlanBeam, tuple[float, ...]]:
    name = str(beam_ds.get("BeamName", "") or "")
    number = int(beam_ds.BeamNumber)
    label = f"beam {number} ({name!r})"
    if beam_ds.get("RadiationType", "PHOTON") != "PHOTON":
        raise RtPlanError(f"{label} has Radiation Type {beam_ds.RadiationType!r}; only PHOTON is supported")
    boundaries = None
    for device in beam_ds.get("BeamLimitingDeviceSequence", []):
        if device.RTBeamLimitingDeviceType == MLC_TYPE:
            boundaries = tuple(float(v) for v in device.LeafPositionBoundaries)
    if boundaries is None:
        raise RtPlanError(f"{label} has no MLCX beam-limiting device; only MLCX plans are supported")
    n_pairs = len(boundaries) - 1
    control_sequence = list(beam_ds.get("ControlPointSequence", []))
    if len(control_sequence) < 2:
        raise RtPlanError(f"{label} has {len(control_sequence)} control points; a beam needs at least 2")
    final_weight = float(beam_ds.get("FinalCumulativeMetersetWeight", 1.0) or 1.0)
    if not final_weight > 0:
        raise RtPlanError(f"{label} has Final Cumulative Meterset Weight {final_weight}; it must be > 0")
    if number not in metersets:
        raise RtPlanError(f"{label} has no Beam Meterset in the fraction group")

    state: dict[str, object] = {}
    control_points = []
    first = control_sequence[0]
    for keyword in ("GantryAngle", "BeamLimitingDeviceAngle", "PatientSupportAngle", "IsocenterPosition",
                    "NominalBeamEnergy"):
        if first.get(keyword) is None:
            raise RtPlanError(f"{label} first control point lacks {keyword}")
    for index, control in enumerate(control_sequence):
        for device in control.get("BeamLimitingDevicePositionSequence", []):
            values = np.array([float(v) for v in device.LeafJawPositions], dtype=np.float64)
            kind = device.RTBeamLimitingDeviceType
            key = "x" if kind in X_JAW_TYPES else "y" if kind in Y_JAW_TYPES else kind
            state[key] = values
        for keyword in ("GantryAngle", "BeamLimitingDeviceAngle", "PatientSupportAngle"):
            value = control.get(keyword)
            if index > 0 and value is not None and float(value) != float(first.get(keyword)):
                raise RtPlanError(
                    f"{label} control point {index} changes {keyword} from {first.get(keyword)} to "
                    f"{control.get(keyword)}; arcs and moving couch / collimator are not supported"
                )
        missing = [key for key in ("x", "y", MLC_TYPE) if key not in state]
        if missing:
            raise RtPlanError(f"{label} control point {index} lacks positions for {missing} (jaws x/y, MLCX)")
        leaves = state[MLC_TYPE]
        if leaves.size != 2 * n_pairs:
            raise RtPlanError(f"{label} control point {index} has {leaves.size} leaf positions for {n_pairs} pairs")
        weight = control.get("CumulativeMetersetWeight")
        if weight is None:
            raise RtPlanError(f"{label} control point {index} has no Cumulative Meterset Weight")
        control_points.append(
            ControlPoint(leaves.reshape(2, n_pairs), tuple(state["x"]), tuple(state["y"]), float(weight) / final_weight)
        )
    weights = np.array([cp.cumulative_weight for cp in control_points])
    if abs(weights[0]) > WEIGHT_TOLERANCE or abs(weights[-1] - 1) > WEIGHT_TOLERANCE or np.any(np.diff(weights) < 0):
        raise RtPlanError(
            f"{label} cumulative meterset weights must rise from 0 to the final weight; got {weights[0]} .. "
            f"{weights[-1]} (decreasing: {bool(np.any(np.diff(weights) < 0))})"
        )
    beam = PlanBeam(
        name=name,
        number=number,
        gantry_deg=float(first.GantryAngle),
        collimator_deg=float(first.BeamLimitingDeviceAngle),
        couch_deg=float(first.PatientSupportAngle),
        isocenter_mm=tuple(float(v) for v in first.IsocenterPosition),
        control_points=tuple(control_points),
        meterset_mu=metersets[number],
        kind=str(beam_ds.get("BeamType", "") or ""),
        nominal_energy_mv=float(first.NominalBeamEnergy),
    )
    return beam, boundaries


def _check_plan(plan: PlanData) -> None:
    if not 0 < len(plan.label) <= 16:
        raise RtPlanError(f"RT Plan Label {plan.label!r} must have 1 to 16 characters")
    if not 0 < len(plan.machine_name) <= 16:
        raise RtPlanError(
            f"Treatment Machine Name {plan.machine_name!r} must have 1 to 16 characters (DICOM SH); give the "
            "linac's short name and the model id in machine_model_id"
        )
    if len(plan.machine_model_id) > 64:
        raise RtPlanError(f"machine_model_id {plan.machine_model_id!r} has more than 64 characters (DICOM LO)")
    bounds = np.asarray(plan.leaf_boundaries_mm)
    if bounds.size < 2 or not np.all(np.isfinite(bounds)) or np.any(np.diff(bounds) <= 0):
        raise RtPlanError(f"leaf_boundaries_mm must be at least 2 finite, increasing values; got {bounds.tolist()}")
    if plan.fractions < 1:
        raise RtPlanError(f"fractions must be >= 1, got {plan.fractions}")
    if plan.prescription_gy is not None and not (np.isfinite(plan.prescription_gy) and plan.prescription_gy > 0):
        raise RtPlanError(f"prescription_gy must be a positive number of Gy, got {plan.prescription_gy}")
    if plan.patient_position not in PATIENT_POSITIONS:
        raise RtPlanError(f"patient_position {plan.patient_position!r} is not one of {sorted(PATIENT_POSITIONS)}")
    if not (np.isfinite(plan.sad_mm) and plan.sad_mm > 0):
        raise RtPlanError(f"sad_mm must be positive, got {plan.sad_mm}")
    if not plan.beams:
        raise RtPlanError("a plan needs at least one beam")
    names = [b.name for b in plan.beams]
    numbers = [b.number for b in plan.beams]
    if len(set(names)) != len(names) or len(set(numbers)) != len(numbers):
        raise RtPlanError(f"beam names {names} and numbers {numbers} must be unique")
    for beam in plan.beams:
        _check_beam(beam, plan.n_pairs)


def _check_beam(beam: PlanBeam, n_pairs: int) -> None:
    label = f"beam {beam.number} ({beam.name!r})"
    if not 0 < len(beam.name) <= 64 or beam.number < 1:
        raise RtPlanError(f"{label}: the name needs 1 to 64 characters and the number must be >= 1")
    if beam.kind not in BEAM_KINDS:
        raise RtPlanError(f"{label}: kind {beam.kind!r} is not one of {sorted(BEAM_KINDS)}")
    for what in ("gantry_deg", "collimator_deg", "couch_deg"):
        angle = getattr(beam, what)
        if not 0 <= angle < 360:
            raise RtPlanError(f"{label}: {what} = {angle} is outside [0, 360)")
    if not all(np.isfinite(beam.isocenter_mm)):
        raise RtPlanError(f"{label}: isocenter {beam.isocenter_mm} is not finite")
    for what in ("meterset_mu", "nominal_energy_mv"):
        if not (np.isfinite(getattr(beam, what)) and getattr(beam, what) > 0):
            raise RtPlanError(f"{label}: {what} must be > 0, got {getattr(beam, what)}")
    points = beam.control_points
    if len(points) < 2:
        raise RtPlanError(f"{label}: {len(points)} control points; a beam needs at least 2")
    for index, cp in enumerate(points):
        where = f"{label} control point {index}"
        leaves = cp.leaf_positions_mm
        if leaves.shape != (2, n_pairs):
            raise RtPlanError(f"{where}: leaf positions have shape {leaves.shape}, the MLC has (2, {n_pairs})")
        values = np.concatenate([leaves.ravel(), cp.jaw_x_mm, cp.jaw_y_mm, [cp.cumulative_weight]])
        if not np.all(np.isfinite(values)):
            raise RtPlanError(f"{where}: leaf, jaw or weight values are not finite")
        crossed = np.flatnonzero(leaves[0] > leaves[1])
        if crossed.size:
            raise RtPlanError(
                f"{where}: leaf pair {int(crossed[0]) + 1} has X1 {leaves[0, crossed[0]]} mm beyond X2 "
                f"{leaves[1, crossed[0]]} mm ({crossed.size} pairs crossed)"
            )
        for jaw, (low, high) in (("X", cp.jaw_x_mm), ("Y", cp.jaw_y_mm)):
            if low > high:
                raise RtPlanError(f"{where}: jaw {jaw}1 {low} mm is beyond jaw {jaw}2 {high} mm")
    weights = np.array([cp.cumulative_weight for cp in points])
    if abs(weights[0]) > WEIGHT_TOLERANCE or abs(weights[-1] - 1) > WEIGHT_TOLERANCE or np.any(np.diff(weights) < 0):
        raise RtPlanError(
            f"{label}: cumulative weights must rise from 0 to 1 without decreasing; got {weights.tolist()}"
        )
    if beam.kind == "STATIC":
        first = points[0]
        for index, cp in enumerate(points[1:], start=1):
            if (np.max(np.abs(cp.leaf_positions_mm - first.leaf_positions_mm)) > POSITION_TOLERANCE_MM
                    or cp.jaw_x_mm != first.jaw_x_mm or cp.jaw_y_mm != first.jaw_y_mm):
                raise RtPlanError(
                    f"{label} is STATIC but control point {index} has another aperture than control point 0; "
                    "use kind='DYNAMIC' for step-and-shoot or sliding-window beams"
                )


def _check_uid(what: str, uid: str) -> None:
    if len(uid) > 64 or not RE_VALID_UID.match(uid):
        raise RtPlanError(f"{what} {uid!r} is not a valid DICOM UID")


def _ds(value: float) -> str:
    """A Decimal String of at most 16 characters: the shortest exact form when it fits."""
    value = float(value) + 0.0  # no "-0"
    text = repr(value)
    if text.endswith(".0"):
        text = text[:-2]
    if len(text) <= 16:
        return text
    for digits in range(15, 0, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    raise RtPlanError(f"{value} cannot be written as a 16-character DICOM decimal string")
