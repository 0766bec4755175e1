"""The ``assist`` parameter of contour jobs: what the user drew or pointed at, checked at submission.

The parameter is a JSON object, one of:

``{"rtstruct_base64": "..."}``
    An RTSTRUCT (base64 of the DICOM file) with structures drawn on some slices of the case's
    CT; each is completed by shape-based interpolation between its drawn slices.
``{"name": "GTV", "seed_mm": [x, y, z], "hu_range": [low, high], "max_radius_mm": 30}``
    Region growing from a seed point (LPS mm) within an HU range, at most that far.
``{"name": "GTV", "box_mm": [[x, y, z], [x, y, z]], "hu_range": [low, high]}``
    The largest in-range region inside a box (two opposite LPS corners, mm).

Optional for all: ``"roi_type"`` (default ``ORGAN``; ``GTV``, ``PTV`` ...) and ``"band_mm"``,
the width of the band around the completed border where a job's deep model of the same
structure (matched by name) may move it (default 5 mm).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
from typing import Any

import pydicom

from rtgrid.engines.dicomrt.rtstruct import RtStructError, read_rtstruct_rois
from rtgrid.engines.segmentation.deep.card import ROI_TYPES

from ..errors import InvalidArgument
from ..store.base import Store

MAX_ASSIST_RTSTRUCT_BYTES = 1 << 20
DEFAULT_BAND_MM = 5.0


def _numbers(value: Any, n: int, what: str) -> list[float]:
    if not isinstance(value, list) or len(value) != n or not all(isinstance(v, (int, float)) for v in value):
        raise InvalidArgument(f"assist: {what} must be a list of {n} numbers, got {value!r}")
    if not all(math.isfinite(v) for v in value):
        raise InvalidArgument(f"assist: {what} must be finite, got {value!r}")
    return [float(v) for v in value]


def _check_rtstruct(request: dict[str, Any], store: Store, case_id: str) -> None:
    try:
        data = base64.b64decode(request["rtstruct_base64"], validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise InvalidArgument("assist: rtstruct_base64 is not base64") from None
    if len(data) > MAX_ASSIST_RTSTRUCT_BYTES:
        raise InvalidArgument(f"assist: the RTSTRUCT has {len(data)} bytes; at most {MAX_ASSIST_RTSTRUCT_BYTES}")
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


def _check_seed(request: dict[str, Any]) -> None:
    if not isinstance(request.get("name"), str) or not request["name"].strip() or len(request["name"]) > 64:
        raise InvalidArgument("assist: name (the structure to make, 1 to 64 characters) is required")
    if ("seed_mm" in request) == ("box_mm" in request):
        raise InvalidArgument("assist: give exactly one of rtstruct_base64, seed_mm or box_mm")
    low, high = _numbers(request.get("hu_range"), 2, "hu_range")
    if low > high:
        raise InvalidArgument(f"assist: hu_range [{low}, {high}] is empty (low > high)")
    if "seed_mm" in request:
        _numbers(request["seed_mm"], 3, "seed_mm")
        radius = request.get("max_radius_mm")
        if not isinstance(radius, (int, float)) or not 0 < radius <= 500:
            raise InvalidArgument(f"assist: max_radius_mm must be a number in (0, 500] mm, got {radius!r}")
    else:
        box = request["box_mm"]
        if not isinstance(box, list) or len(box) != 2:
            raise InvalidArgument(f"assist: box_mm must be two LPS corners [[x, y, z], [x, y, z]], got {box!r}")
        for corner in box:
            _numbers(corner, 3, "each corner of box_mm")


def check_assist(text: str, store: Store, case_id: str) -> str:
    """Validate the ``assist`` parameter of a contour job; returns it unchanged.

    Raises
    ------
    InvalidArgument
        Naming what is wrong (not JSON, unreadable RTSTRUCT, no drawn contour, another frame of
        reference, a missing or malformed seed, box, HU range or radius, unknown fields).
    """
    try:
        request = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"assist: not JSON: {exc}") from None
    if not isinstance(request, dict):
        raise InvalidArgument("assist: expected a JSON object")
    known = {"rtstruct_base64", "name", "seed_mm", "box_mm", "hu_range", "max_radius_mm", "roi_type", "band_mm"}
    unknown = sorted(set(request) - known)
    if unknown:
        raise InvalidArgument(f"assist: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    if request.get("roi_type", "ORGAN") not in ROI_TYPES:
        raise InvalidArgument(f"assist: roi_type {request['roi_type']!r} is not one of {', '.join(sorted(ROI_TYPES))}")
    band = request.get("band_mm", DEFAULT_BAND_MM)
    if not isinstance(band, (int, float)) or not 0 < band <= 50:
        raise InvalidArgument(f"assist: band_mm must be a number in (0, 50] mm, got {band!r}")
    if "rtstruct_base64" in request:
        if {"seed_mm", "box_mm"} & set(request):
            raise InvalidArgument("assist: give exactly one of rtstruct_base64, seed_mm or box_mm")
        _check_rtstruct(request, store, case_id)
    else:
        _check_seed(request)
    return text


__all__ = ["DEFAULT_BAND_MM", "check_assist"]
