"""Deliverability check of step-and-shoot segments on a device: every reason a segment or a beam
cannot be delivered as it stands, each with its values and the device's limit."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .device import DeviceModel
from .segment import Segment, Violation

TOLERANCE_MM = 1e-6
TOLERANCE_MU = 1e-6


def _segment_violations(seg: Segment, device: DeviceModel, beam: int | None, s: int) -> list[Violation]:
    machine = device.machine
    found: list[Violation] = []

    def add(kind: str, message: str) -> None:
        found.append(Violation(kind, beam, s, f"segment {s}: {message}"))

    x1, x2 = np.asarray(seg.leaf_x1_mm, dtype=np.float64), np.asarray(seg.leaf_x2_mm, dtype=np.float64)
    if x1.shape != (machine.n_pairs,) or x2.shape != (machine.n_pairs,):
        add("leaf_count", f"{x1.size} / {x2.size} leaf positions for the {machine.n_pairs} pairs of {device.id}")
        return found
    half_x = machine.max_field_mm[0] / 2.0
    reach = device.leaf_overtravel_mm
    for bank, pos, lo, hi in (("X1", x1, -half_x, reach), ("X2", x2, -reach, half_x)):
        bad = np.flatnonzero((pos < lo - TOLERANCE_MM) | (pos > hi + TOLERANCE_MM))
        if bad.size:
            p = bad[np.argmax(np.maximum(lo - pos[bad], pos[bad] - hi))]
            add("leaf_travel", f"{bank} leaf of pair {p} at {pos[p]:.1f} mm is outside its travel {lo:.1f} .. {hi:.1f} mm")
    gaps = x2 - x1
    bad = np.flatnonzero(gaps < machine.min_leaf_gap_mm - TOLERANCE_MM)
    if bad.size:
        p = bad[np.argmin(gaps[bad])]
        add("leaf_gap", f"pair {p} opposing leaves {gaps[p]:.2f} mm apart, below the minimum gap {machine.min_leaf_gap_mm:g} mm "
                        f"({bad.size} pairs)")
    if not machine.interdigitation:
        clash_up = x1[:-1] > x2[1:] + TOLERANCE_MM   # X1 leaf of pair i passes the X2 leaf of pair i+1
        clash_down = x1[1:] > x2[:-1] + TOLERANCE_MM  # X1 leaf of pair i+1 passes the X2 leaf of pair i
        if clash_up.any() or clash_down.any():
            p = int(np.flatnonzero(clash_up | clash_down)[0])
            add("interdigitation", f"leaves of pairs {p} and {p + 1} interdigitate (X1 {x1[p]:.1f} / {x1[p + 1]:.1f} mm, "
                                   f"X2 {x2[p]:.1f} / {x2[p + 1]:.1f} mm), which {device.id} does not allow")
    for bank, pos in (("X1", x1), ("X2", x2)):
        span = float(pos.max() - pos.min())
        if span > machine.max_leaf_span_mm + TOLERANCE_MM:
            add("leaf_span", f"{bank} bank spans {span:.1f} mm, beyond the maximum leaf span {machine.max_leaf_span_mm:g} mm "
                             f"of {device.id}")
    jaws = {"X1": seg.jaw_x_mm[0], "X2": seg.jaw_x_mm[1], "Y1": seg.jaw_y_mm[0], "Y2": seg.jaw_y_mm[1]}
    checked = ("X1", "X2", "Y1", "Y2") if device.x_jaws else ("Y1", "Y2")
    for name in checked:
        lo, hi = machine.jaw_limits_mm[name]
        if not lo - TOLERANCE_MM <= jaws[name] <= hi + TOLERANCE_MM:
            add("jaw_travel", f"jaw {name} at {jaws[name]:.1f} mm is outside its travel {lo:g} .. {hi:g} mm")
    width, height = jaws["X2"] - jaws["X1"], jaws["Y2"] - jaws["Y1"]
    if width > machine.max_field_mm[0] + TOLERANCE_MM or height > machine.max_field_mm[1] + TOLERANCE_MM:
        add("field_size", f"field {width:.1f} x {height:.1f} mm exceeds the maximum {machine.max_field_mm[0]:g} x "
                          f"{machine.max_field_mm[1]:g} mm of {device.id}")
    if seg.mu < device.min_segment_mu - TOLERANCE_MU:
        add("segment_mu", f"{seg.mu:.2f} MU, below the minimum {device.min_segment_mu:g} MU per segment of {device.id}")
    return found


def deliverability(segments: Sequence[Segment], device: DeviceModel, beam: int | None = None) -> list[Violation]:
    """Every reason the segments of one beam cannot be delivered on ``device``.

    Checks per segment: leaf count, leaf travel (``-max_field/2 .. overtravel`` for X1 and the
    mirror for X2), minimum gap between opposing leaves, interdigitation (when the device forbids
    it, no X1 leaf of pair ``i`` may pass the X2 leaf of pair ``i +- 1``), maximum leaf span per
    bank, jaw travel, field size and minimum MU; per beam: total MU and number of segments.

    Parameters
    ----------
    segments
        The beam's segments (MU per fraction).
    device
    beam
        Beam index recorded in the violations.

    Returns
    -------
    list of Violation
        Empty when the beam is deliverable.
    """
    found: list[Violation] = []
    for s, seg in enumerate(segments):
        found.extend(_segment_violations(seg, device, beam, s))
    total = float(sum(seg.mu for seg in segments))
    if total > device.max_mu_per_beam + TOLERANCE_MU:
        found.append(Violation("beam_mu", beam, None, f"beam needs {total:.1f} MU, above the {device.max_mu_per_beam:g} MU "
                                                      f"per beam of {device.id}"))
    if len(segments) > device.max_segments_per_beam:
        found.append(Violation("segment_count", beam, None, f"beam has {len(segments)} segments, above the "
                                                           f"{device.max_segments_per_beam} per beam of {device.id}"))
    return found
