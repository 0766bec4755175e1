"""Volumes <-> SimpleITK images, and the checks every registration makes before it starts.

SimpleITK's physical space is DICOM's patient space (LPS, mm): a ``Volume``'s origin, spacing and
direction carry over unchanged, so no axis is flipped anywhere in this package.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from rtgrid.engines.imaging.volume import ImageSeries, Volume
from rtgrid.engines.registration.errors import (
    EmptyImageError,
    NoOverlapError,
    PatientMismatchError,
    RegistrationModalityError,
)

FIXED_MODALITIES = ("CT",)
"""The planning image every other series is registered to."""
MOVING_MODALITIES = ("MR", "PT")
CT_BODY_THRESHOLD_HU = -400.0
"""CT voxels above this are body (or couch); the overlap test counts them."""
OVERLAP_SAMPLE_POINTS = 20000
"""At most this many body voxels of the fixed image are mapped to measure the overlap."""


def to_sitk(volume: Volume) -> sitk.Image:
    """A float32 SimpleITK image with ``volume``'s exact LPS geometry."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.voxels, dtype=np.float32))
    image.SetOrigin(tuple(float(v) for v in volume.origin_mm))
    image.SetSpacing(tuple(float(v) for v in volume.spacing_mm))
    image.SetDirection(tuple(float(v) for v in volume.direction.reshape(-1)))
    return image


def from_sitk(image: sitk.Image) -> Volume:
    """The ``Volume`` of a 3-D scalar SimpleITK image (array ``[k, j, i]``)."""
    return Volume(
        voxels=sitk.GetArrayFromImage(image),
        origin_mm=np.array(image.GetOrigin()),
        spacing_mm=np.array(image.GetSpacing()),
        direction=np.array(image.GetDirection()).reshape(3, 3),
    )


def check_pair(fixed: ImageSeries, moving: ImageSeries) -> None:
    """Refuse a pair that is not (planning CT, MR or PET) of one patient, or holds an empty image.

    Raises
    ------
    RegistrationModalityError
        The fixed series is not CT, or the moving series is not MR or PT.
    PatientMismatchError
        Both series name a PatientID and they differ.
    EmptyImageError
        Either volume has no voxels, a non-finite voxel, or a single value everywhere.
    """
    if fixed.modality not in FIXED_MODALITIES:
        raise RegistrationModalityError(
            f"fixed series {fixed.series_instance_uid or '(no UID)'} is {fixed.modality or 'of no modality'}; "
            f"registration aligns to the planning image ({' or '.join(FIXED_MODALITIES)})"
        )
    if moving.modality not in MOVING_MODALITIES:
        raise RegistrationModalityError(
            f"moving series {moving.series_instance_uid or '(no UID)'} is {moving.modality or 'of no modality'}; "
            f"only {' and '.join(MOVING_MODALITIES)} series are registered to the planning CT"
        )
    if fixed.patient_id and moving.patient_id and fixed.patient_id != moving.patient_id:
        raise PatientMismatchError(
            f"the {moving.modality} series {moving.series_instance_uid or '(no UID)'} is of PatientID "
            f"{moving.patient_id!r}, the planning CT of PatientID {fixed.patient_id!r}"
        )
    for role, series in (("fixed", fixed), ("moving", moving)):
        voxels = series.volume.voxels
        name = f"{role} {series.modality} series {series.series_instance_uid or '(no UID)'}"
        if voxels.size == 0:
            raise EmptyImageError(f"{name} has no voxels (shape {voxels.shape})")
        if min(voxels.shape) < 4:
            raise EmptyImageError(f"{name} has shape {voxels.shape}; registration needs at least 4 voxels per axis")
        if not np.all(np.isfinite(voxels)):
            raise EmptyImageError(f"{name} holds non-finite voxels (NaN or infinity)")
        if float(np.ptp(voxels)) == 0.0:
            raise EmptyImageError(f"{name} holds the single value {float(voxels.flat[0])!r} everywhere")


def body_points_mm(fixed: Volume, limit: int = OVERLAP_SAMPLE_POINTS, seed: int = 0) -> np.ndarray:
    """Up to ``limit`` LPS positions (mm) of CT body voxels (above ``CT_BODY_THRESHOLD_HU``), repeatable."""
    k, j, i = np.nonzero(fixed.voxels > CT_BODY_THRESHOLD_HU)
    if len(k) == 0:
        k, j, i = (axis.ravel() for axis in np.indices(fixed.shape))
    ijk = np.column_stack([i, j, k]).astype(np.float64)
    if len(ijk) > limit:
        ijk = ijk[np.random.default_rng(seed).choice(len(ijk), limit, replace=False)]
    return fixed.index_to_lps(ijk)


def inside_fraction(points_mm: np.ndarray, volume: Volume) -> float:
    """The fraction of ``points_mm`` (LPS) that lie inside ``volume``'s extent (voxel centres +- half a voxel)."""
    ijk = volume.lps_to_index(points_mm)
    upper = np.array(volume.shape[::-1], dtype=np.float64) - 0.5
    inside = np.all((ijk >= -0.5) & (ijk <= upper), axis=1)
    return float(inside.mean()) if len(inside) else 0.0


def check_overlap(
    fixed: ImageSeries, moving: ImageSeries, fixed_to_moving_points, minimum_fraction: float, when: str
) -> float:
    """Refuse the pair when too little of the CT's body falls inside the moving image.

    Parameters
    ----------
    fixed, moving : ImageSeries
        The planning CT and the MR or PET.
    fixed_to_moving_points : callable
        Maps ``(N, 3)`` fixed LPS points (mm) to moving LPS points (mm).
    minimum_fraction : float
        Smallest accepted fraction of body points that land inside the moving image.
    when : str
        ``"before"`` or ``"after"`` registration, for the message.

    Returns
    -------
    float
        The measured fraction.

    Raises
    ------
    NoOverlapError
        The fraction is below ``minimum_fraction``.
    """
    points = body_points_mm(fixed.volume)
    fraction = inside_fraction(fixed_to_moving_points(points), moving.volume)
    if fraction < minimum_fraction:
        raise NoOverlapError(
            f"{when} registration only {100 * fraction:.1f}% of the CT's body (series "
            f"{fixed.series_instance_uid or '(no UID)'}) lies inside the {moving.modality} image (series "
            f"{moving.series_instance_uid or '(no UID)'}, extent {_extent(moving.volume)}); at least "
            f"{100 * minimum_fraction:.0f}% must overlap"
        )
    return fraction


def _extent(volume: Volume) -> str:
    corners = np.array([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)], dtype=np.float64)
    corners *= np.array(volume.shape[::-1], dtype=np.float64) - 1
    lps = volume.index_to_lps(corners)
    low, high = lps.min(axis=0), lps.max(axis=0)
    return "LPS " + " x ".join(f"[{lo:.1f}, {hi:.1f}]" for lo, hi in zip(low, high)) + " mm"
