"""The ``assist`` parameter of contour jobs: what the user drew or pointed at, checked at submission.

The parameter is a JSON object, one of:

``{"rtstruct_base64": "..."}``
    An RTSTRUCT (base64 of the DICOM file) with structures drawn on some slices of the case's
    CT; each is completed by shape-based interpolation between its drawn slices.
``{"name": "GTV", "seed_mm": [x, y, z], "hu_range": [low, high], "max_radius_mm": 30}``
    Region growing from a seed point (LPS mm) within an HU range, at most that far (0 < radius
    <= 500 mm).
``{"name": "GTV", "box_mm": [[x, y, z], [x, y, z]], "hu_range": [low, high]}``
    The largest in-range region inside a box (two opposite LPS corners, mm).

Optional for all: ``"roi_type"`` (default ``ORGAN``; ``GTV``, ``PTV`` ...) and ``"band_mm"``,
the width of the band around the completed border where a job's deep model of the same
structure (matched by name) may move it (0 < band <= 50 mm, default 5 mm).

:func:`parse_assist` turns the text into an :class:`AssistRequest` (defaults and ranges declared
here once); :func:`check_assist` also reads the RTSTRUCT against the case's CT.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
from dataclasses import dataclass, fields
from typing import Any

import pydicom

from rtgrid.engines.dicomrt.rtstruct import RtStructError, read_rtstruct_rois
from rtgrid.engines.segmentation.deep.card import ROI_TYPES

from ..errors import InvalidArgument
from ..store.base import Store

MAX_ASSIST_RTSTRUCT_BYTES = 1 << 20
DEFAULT_BAND_MM = 5.0
DEFAULT_ROI_TYPE = "ORGAN"
BAND_MM_RANGE = (0, 50)  # (low, high]: mm
MAX_RADIUS_MM_RANGE = (0, 500)  # (low, high]: mm
MAX_NAME_CHARS = 64  # a DICOM ROI Name (LO)


@dataclass(frozen=True)
class AssistRequest:
    """A checked ``assist`` parameter: exactly one of ``rtstruct_base64``, ``seed_mm`` or ``box_mm``."""

    rtstruct_base64: str | None = None
    name: str = ""  # the structure to make (seed or box)
    seed_mm: tuple[float, float, float] | None = None  # LPS
    box_mm: tuple[tuple[float, float, float], tuple[float, float, float]] | None = None  # two opposite LPS corners
    hu_range: tuple[float, float] | None = None
    max_radius_mm: float | None = None  # with seed_mm
    roi_type: str = DEFAULT_ROI_TYPE
    band_mm: float = DEFAULT_BAND_MM


KNOWN_FIELDS = frozenset(f.name for f in fields(AssistRequest))


def _in_half_open(value: Any, bounds: tuple[float, float]) -> bool:
    return isinstance(value, (int, float)) and bounds[0] < value <= bounds[1]


def _numbers(value: Any, n: int, what: str) -> list[float]:
    if not isinstance(value, list) or len(value) != n or not all(isinstance(v, (int, float)) for v in value):
        raise InvalidArgument(f"assist: {what} must be a list of {n} numbers, got {value!r}")
    if not all(math.isfinite(v) for v in value):
        raise InvalidArgument(f"assist: {what} must be finite, got {value!r}")
    return [float(v) for v in value]


def _check_rtstruct(data: bytes, store: Store, case_id: str) -> None:
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        rois = read_rtstruct_rois(ds)
    except (RtStructError, pydicom.errors.InvalidDicomError, AttributeError, KeyError, ValueError) as exc:
        raise InvalidArgument(f"assist: not a readable RTSTRUCT: {exc}") from None
    drawn = {c.ReferencedROINumber for c in ds.get("ROIContourSequence", []) if c.get("ContourSequence")}
    if not any(r.number in drawn for r in rois):
        raise InvalidArgument("assist: the RTSTRUCT has no drawn contour to complete")
    series = store.list_series(case_id)
    frame = series[0].frame_of_reference_uid if series else ""
    elsewhere = sorted(r.name for r in rois if r.number in drawn and r.frame_of_reference_uid != frame)
    if elsewhere:
        raise InvalidArgument(f"assist: structures {', '.join(elsewhere[:5])} are not drawn on the case's CT "
                              f"(frame of reference {frame})")


def _rtstruct_bytes(text: Any) -> bytes:
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise InvalidArgument("assist: rtstruct_base64 is not base64") from None
    if len(data) > MAX_ASSIST_RTSTRUCT_BYTES:
        raise InvalidArgument(f"assist: the RTSTRUCT has {len(data)} bytes; at most {MAX_ASSIST_RTSTRUCT_BYTES}")
    return data


def _parse_seed_or_box(request: dict[str, Any], common: dict[str, Any]) -> AssistRequest:
    name = request.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_CHARS:
        raise InvalidArgument(f"assist: name (the structure to make, 1 to {MAX_NAME_CHARS} characters) is required")
    if ("seed_mm" in request) == ("box_mm" in request):
        raise InvalidArgument("assist: give exactly one of rtstruct_base64, seed_mm or box_mm")
    low, high = _numbers(request.get("hu_range"), 2, "hu_range")
    if low > high:
        raise InvalidArgument(f"assist: hu_range [{low}, {high}] is empty (low > high)")
    if "seed_mm" in request:
        seed = _numbers(request["seed_mm"], 3, "seed_mm")
        radius = request.get("max_radius_mm")
        if not _in_half_open(radius, MAX_RADIUS_MM_RANGE):
            raise InvalidArgument(f"assist: max_radius_mm must be a number in ({MAX_RADIUS_MM_RANGE[0]}, "
                                  f"{MAX_RADIUS_MM_RANGE[1]}] mm, got {radius!r}")
        return AssistRequest(name=name, seed_mm=tuple(seed), hu_range=(low, high), max_radius_mm=float(radius), **common)
    box = request["box_mm"]
    if not isinstance(box, list) or len(box) != 2:
        raise InvalidArgument(f"assist: box_mm must be two LPS corners [[x, y, z], [x, y, z]], got {box!r}")
    corners = tuple(tuple(_numbers(corner, 3, "each corner of box_mm")) for corner in box)
    return AssistRequest(name=name, box_mm=corners, hu_range=(low, high), **common)


def parse_assist(text: str) -> AssistRequest:
    """The ``assist`` parameter of a contour job, typed (all checks but those of the RTSTRUCT's content).

    Raises
    ------
    InvalidArgument
        Naming what is wrong (not JSON, unknown fields, not base64 or too large, a missing or
        malformed seed, box, HU range or radius, a ROI type or band out of range).
    """
    try:
        request = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"assist: not JSON: {exc}") from None
    if not isinstance(request, dict):
        raise InvalidArgument("assist: expected a JSON object")
    unknown = sorted(set(request) - KNOWN_FIELDS)
    if unknown:
        raise InvalidArgument(f"assist: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(KNOWN_FIELDS))}")
    roi_type = request.get("roi_type", DEFAULT_ROI_TYPE)
    if roi_type not in ROI_TYPES:
        raise InvalidArgument(f"assist: roi_type {roi_type!r} is not one of {', '.join(sorted(ROI_TYPES))}")
    band = request.get("band_mm", DEFAULT_BAND_MM)
    if not _in_half_open(band, BAND_MM_RANGE):
        raise InvalidArgument(f"assist: band_mm must be a number in ({BAND_MM_RANGE[0]}, {BAND_MM_RANGE[1]}] mm, "
                              f"got {band!r}")
    common = {"roi_type": roi_type, "band_mm": float(band)}
    if "rtstruct_base64" not in request:
        return _parse_seed_or_box(request, common)
    if {"seed_mm", "box_mm"} & set(request):
        raise InvalidArgument("assist: give exactly one of rtstruct_base64, seed_mm or box_mm")
    _rtstruct_bytes(request["rtstruct_base64"])
    return AssistRequest(rtstruct_base64=request["rtstruct_base64"], **common)


def check_assist(text: str, store: Store, case_id: str) -> str:
    """Validate the ``assist`` parameter of a contour job; returns it unchanged.

    Raises
    ------
    InvalidArgument
        Naming what is wrong: as :func:`parse_assist`, and for an RTSTRUCT one that is unreadable,
        has no drawn contour, or lies on another frame of reference than the case's CT.
    """
    request = parse_assist(text)
    if request.rtstruct_base64 is not None:
        _check_rtstruct(_rtstruct_bytes(request.rtstruct_base64), store, case_id)
    return text


__all__ = ["AssistRequest", "DEFAULT_BAND_MM", "check_assist", "parse_assist"]
