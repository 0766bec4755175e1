"""Does a CT cover the body region a model was trained on?

A model trained on head-and-neck CTs draws a mandible wherever something looks like one; on an
abdominal CT that contour would reach a planning system. Each model card declares its
``body_region``; before the model runs, the CT is checked for that region with a classical,
explainable test, and the model is skipped (with the reason) where the region is absent.

``head_and_neck``: the axial body outline (the largest connected region above -500 HU) is a head
or a neck — between 60 and 400 cm² — over at least 30 mm of consecutive slices. An adult
abdomen, pelvis or thorax is 500 cm² or more; a head is about 150-250 cm², a neck 80-150 cm².
(Limbs also have small outlines: the test is made for the CTs of radiotherapy of the trunk
and head, not for extremities.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from rtgrid.engines.errors import EngineError
from rtgrid.engines.imaging.volume import Volume

BODY_HU = -500.0
HEAD_NECK_AREA_CM2 = (60.0, 400.0)
HEAD_NECK_MIN_EXTENT_MM = 30.0
KNOWN_REGIONS = ("head_and_neck",)


class UnknownRegionError(EngineError, ValueError):
    """A model card declares a body region rtgrid cannot check."""


@dataclass(frozen=True)
class RegionCheck:
    """Whether a CT covers a region, over which slices, and why (for the job's events).

    Attributes
    ----------
    region : str
        The region checked (``""``: the model declares none, so it always runs).
    covered : bool
        True when the model should run.
    first_slice, last_slice : int
        Inclusive slice range of the region (the whole CT when no region is declared; -1 when not covered).
    reason : str
        A sentence with the measured figures.
    """

    region: str
    covered: bool
    first_slice: int
    last_slice: int
    reason: str


def body_areas_cm2(volume: Volume) -> np.ndarray:
    """Area (cm²) of the largest connected region above ``BODY_HU`` on each axial slice."""
    pixel_cm2 = float(volume.spacing_mm[0] * volume.spacing_mm[1]) / 100.0
    areas = np.zeros(volume.shape[0])
    for k, hu in enumerate(volume.voxels):
        labels, n = ndimage.label(hu > BODY_HU)
        if n:
            areas[k] = np.bincount(labels.ravel())[1:].max() * pixel_cm2
    return areas


def check_region(volume: Volume, region: str) -> RegionCheck:
    """Check that ``volume`` (an axial CT in HU) covers ``region``.

    Parameters
    ----------
    volume : Volume
        The CT.
    region : str
        A card's ``body_region``: ``""`` (none declared) or one of :data:`KNOWN_REGIONS`.

    Returns
    -------
    RegionCheck

    Raises
    ------
    UnknownRegionError
        ``region`` is not one rtgrid knows how to check.
    """
    nz = volume.shape[0]
    if not region:
        return RegionCheck("", True, 0, nz - 1, "the model declares no body region")
    if region not in KNOWN_REGIONS:
        raise UnknownRegionError(f"body region {region!r} cannot be checked; known: {', '.join(KNOWN_REGIONS)}")
    areas = body_areas_cm2(volume)
    low, high = HEAD_NECK_AREA_CM2
    inside = (areas >= low) & (areas <= high)
    runs, n = ndimage.label(inside)
    slice_mm = float(volume.spacing_mm[2])
    best = (0, -1, -1)  # (slices, first, last)
    for run in range(1, n + 1):
        where = np.flatnonzero(runs == run)
        if len(where) > best[0]:
            best = (len(where), int(where[0]), int(where[-1]))
    extent_mm = best[0] * slice_mm
    figures = f"body outline {areas.min():.0f}-{areas.max():.0f} cm² per slice"
    if extent_mm >= HEAD_NECK_MIN_EXTENT_MM:
        return RegionCheck(region, True, best[1], best[2],
                           f"head and neck over slices {best[1]}-{best[2]} ({extent_mm:.0f} mm; {figures})")
    return RegionCheck(region, False, -1, -1,
                       f"the CT does not cover the head and neck: {figures}, {extent_mm:.0f} mm of slices within "
                       f"{low:.0f}-{high:.0f} cm² (at least {HEAD_NECK_MIN_EXTENT_MM:.0f} mm needed)")
