"""MR-like and PET-like images synthesized from a real planning CT, with a known rigid transform.

Each synthetic image has its own Frame of Reference and grid (identity direction, its own spacing);
its voxel at moving-frame point ``p`` shows the CT's anatomy at ``M @ p``, where ``M`` is the KNOWN
4 x 4 MOVING -> FIXED matrix (LPS, mm) a registration must recover.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import SimpleITK as sitk
from pydicom.uid import generate_uid
from scipy import ndimage

from rtgrid.engines.imaging.openkbp import OpenKBPPatient, load_openkbp_patient
from rtgrid.engines.imaging.volume import ImageSeries, SliceRef, Volume
from rtgrid.engines.registration.images import from_sitk, to_sitk
from rtgrid.engines.registration.rigid import apply_matrix, rigid_matrix
from tests.conftest import require_shared

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
PET_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.128"
PATIENT = "pt_201"
# The known MOVING -> FIXED transforms: a few degrees about every axis and several mm.
MR_ROTATION_DEG = (3.0, -2.5, 4.0)
MR_TRANSLATION_MM = (6.0, -8.0, 5.0)
PET_ROTATION_DEG = (-2.0, 3.5, -3.0)
PET_TRANSLATION_MM = (-7.0, 5.0, 9.0)


def openkbp_patient() -> OpenKBPPatient:
    """The real CT (OpenKBP validation ``pt_201``); skips when ../shared is absent."""
    return load_openkbp_patient(require_shared("openkbp/validation") / f"{PATIENT}.npz")


def series_of(volume: Volume, modality: str, *, frame_uid: str | None = None, study_uid: str | None = None) -> ImageSeries:
    """An in-memory ``ImageSeries`` (fresh UIDs, one SliceRef per slice) for ``volume``."""
    sop_class = {"CT": CT_IMAGE_STORAGE, "MR": MR_IMAGE_STORAGE, "PT": PET_IMAGE_STORAGE}.get(modality, CT_IMAGE_STORAGE)
    slices = tuple(
        SliceRef(sop_class, generate_uid(), k, tuple(float(v) for v in volume.index_to_lps(np.array([0.0, 0.0, k]))))
        for k in range(volume.shape[0])
    )
    return ImageSeries(
        volume=volume,
        modality=modality,
        study_instance_uid=study_uid or generate_uid(),
        series_instance_uid=generate_uid(),
        frame_of_reference_uid=frame_uid or generate_uid(),
        slices=slices,
        patient_id=PATIENT,
        patient_name="OpenKBP^201",
    )


def planning_ct(patient: OpenKBPPatient) -> ImageSeries:
    """The patient's CT as the fixed series (HU, float32)."""
    volume = patient.volume
    return series_of(volume.with_voxels(volume.voxels.astype(np.float32)), "CT")


def moving_grid(ct: Volume, matrix_moving_to_fixed: np.ndarray, spacing_mm: tuple[float, float, float], margin_mm: float = 10.0) -> Volume:
    """An identity-direction grid in the moving frame that holds the CT's body plus a margin."""
    k, j, i = np.nonzero(ct.voxels > -400)
    corners = np.array([[a, b, c] for a in (i.min(), i.max()) for b in (j.min(), j.max()) for c in (k.min(), k.max())], float)
    in_moving = apply_matrix(np.linalg.inv(matrix_moving_to_fixed), ct.index_to_lps(corners))
    low, high = in_moving.min(axis=0) - margin_mm, in_moving.max(axis=0) + margin_mm
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    shape_xyz = np.ceil((high - low) / spacing).astype(int) + 1
    return Volume(np.zeros(tuple(shape_xyz[::-1]), dtype=np.float32), low, spacing)


def resample_ct_to_moving(ct: Volume, grid: Volume, matrix_moving_to_fixed: np.ndarray, default: float) -> Volume:
    """The CT's values at ``M @ p`` for every voxel centre ``p`` of ``grid`` (linear interpolation)."""
    transform = sitk.AffineTransform(3)
    transform.SetMatrix(tuple(matrix_moving_to_fixed[:3, :3].reshape(-1)))
    transform.SetTranslation(tuple(matrix_moving_to_fixed[:3, 3]))
    out = sitk.Resample(to_sitk(ct), to_sitk(grid), transform, sitk.sitkLinear, float(default), sitk.sitkFloat32)
    return from_sitk(out)


def mr_signal(hu: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A T1-like nonlinear remap of HU: fat bright, soft tissue grey, bone and air dark, with noise."""
    fat = np.exp(-(((hu + 100.0) / 60.0) ** 2))
    soft = 0.45 * np.exp(-(((hu - 40.0) / 60.0) ** 2))
    bone = 0.12 * (hu > 250)
    marrow = 0.35 * np.exp(-(((hu - 180.0) / 60.0) ** 2))
    signal = 1000.0 * (fat + soft + bone + marrow)
    return (signal + rng.normal(0.0, 20.0, hu.shape)).clip(0).astype(np.float32)


def pet_uptake(ct: Volume, hot_spots_mm: list[np.ndarray], fwhm_mm: float = 8.0) -> Volume:
    """Smooth uptake (Bq/mL) on the CT grid: soft tissue > fat > lung/air, hot spots, blurred."""
    hu = ct.voxels.astype(np.float32)
    activity = np.where(hu > -300, 5000.0, 0.0) + np.where((hu > -150) & (hu < -30), -2500.0, 0.0)
    xyz = ct.index_to_lps(np.stack(np.meshgrid(*[np.arange(n) for n in ct.shape[::-1]], indexing="ij"), -1).transpose(2, 1, 0, 3))
    for centre in hot_spots_mm:
        activity += 40000.0 * np.exp(-np.sum((xyz - centre) ** 2, axis=-1) / (2 * 6.0**2))
    sigma_vox = fwhm_mm / 2.355 / ct.spacing_mm[::-1]
    return ct.with_voxels(ndimage.gaussian_filter(activity.astype(np.float32), sigma_vox))


def synthetic_mr(ct: ImageSeries, seed: int = 1) -> tuple[ImageSeries, np.ndarray]:
    """An MR-like series in its own frame and the true MOVING -> FIXED matrix."""
    matrix = _about_centre(rigid_matrix(MR_ROTATION_DEG, MR_TRANSLATION_MM), ct.volume)
    grid = moving_grid(ct.volume, matrix, (3.0, 3.0, 3.5))
    hu = resample_ct_to_moving(ct.volume, grid, matrix, default=-1024.0)
    voxels = mr_signal(hu.voxels, np.random.default_rng(seed))
    return series_of(grid.with_voxels(voxels), "MR", study_uid=ct.study_instance_uid), matrix


def synthetic_pet(ct: ImageSeries, hot_spots_mm: list[np.ndarray], seed: int = 2) -> tuple[ImageSeries, np.ndarray]:
    """A PET-like series (lower resolution, Bq/mL) in its own frame and the true MOVING -> FIXED matrix."""
    matrix = _about_centre(rigid_matrix(PET_ROTATION_DEG, PET_TRANSLATION_MM), ct.volume)
    grid = moving_grid(ct.volume, matrix, (6.0, 6.0, 6.0))
    uptake = resample_ct_to_moving(pet_uptake(ct.volume, hot_spots_mm), grid, matrix, default=0.0)
    noise = np.random.default_rng(seed).normal(0.0, 150.0, uptake.shape)
    voxels = (uptake.voxels + noise).clip(0).astype(np.float32)
    return series_of(grid.with_voxels(voxels), "PT", study_uid=ct.study_instance_uid), matrix


def error_at_body_points_mm(ct: Volume, true_matrix: np.ndarray, found_matrix: np.ndarray) -> np.ndarray:
    """|found(p) - true(p)| in mm for moving-frame points p of every CT body voxel (HU > -400)."""
    k, j, i = np.nonzero(ct.voxels > -400)
    fixed_points = ct.index_to_lps(np.column_stack([i, j, k]).astype(np.float64))
    moving_points = apply_matrix(np.linalg.inv(true_matrix), fixed_points)
    return np.linalg.norm(apply_matrix(found_matrix, moving_points) - fixed_points, axis=1)


def rotation_error_deg(true_matrix: np.ndarray, found_matrix: np.ndarray) -> float:
    """The angle of the rotation that separates the two matrices, degrees."""
    delta = found_matrix[:3, :3] @ true_matrix[:3, :3].T
    return float(np.degrees(np.arccos(np.clip((np.trace(delta) - 1) / 2, -1.0, 1.0))))


def _about_centre(matrix: np.ndarray, ct: Volume) -> np.ndarray:
    """The same rotation about the CT's centre, then the translation: realistic patient set-up."""
    centre = ct.index_to_lps((np.array(ct.shape[::-1], dtype=np.float64) - 1) / 2)
    out = matrix.copy()
    out[:3, 3] = centre + matrix[:3, 3] - matrix[:3, :3] @ centre
    return out


def bump_mm(points_mm: np.ndarray, centre_mm: np.ndarray, amplitude_mm: np.ndarray, sigma_mm: float) -> np.ndarray:
    """A smooth local displacement (mm): ``amplitude * exp(-|p - centre|^2 / (2 sigma^2))``."""
    weight = np.exp(-np.sum((points_mm - centre_mm) ** 2, axis=-1) / (2 * sigma_mm**2))
    return weight[..., None] * amplitude_mm


def synthetic_deformed_mr(ct: ImageSeries, centre_mm: np.ndarray, amplitude_mm: np.ndarray, sigma_mm: float, seed: int = 3):
    """An MR-like series whose anatomy is the CT's moved rigidly AND pushed by a smooth local bump.

    Returns the series and ``true_moving_to_fixed(points)``: a moving-frame point ``p`` shows the CT
    at ``x + bump(x)`` with ``x = M p``.
    """
    matrix = _about_centre(rigid_matrix(MR_ROTATION_DEG, MR_TRANSLATION_MM), ct.volume)
    grid = moving_grid(ct.volume, matrix, (3.0, 3.0, 3.5))
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in grid.shape[::-1]], indexing="ij"), -1).transpose(2, 1, 0, 3)

    def truth(points: np.ndarray) -> np.ndarray:
        x = apply_matrix(matrix, points.reshape(-1, 3)).reshape(points.shape)
        return x + bump_mm(x, centre_mm, amplitude_mm, sigma_mm)

    where = ct.volume.lps_to_index(truth(grid.index_to_lps(ijk.astype(np.float64)).reshape(-1, 3)))
    hu = ndimage.map_coordinates(ct.volume.voxels, where[:, ::-1].T, order=1, mode="constant", cval=-1024.0)
    voxels = mr_signal(hu.reshape(grid.shape), np.random.default_rng(seed))
    return series_of(grid.with_voxels(voxels), "MR", study_uid=ct.study_instance_uid), matrix, truth


def crop(series: ImageSeries, centre_mm: np.ndarray, half_mm: float) -> ImageSeries:
    """The series cut to a box of +-``half_mm`` around ``centre_mm`` (same frame; slices re-referenced)."""
    volume = series.volume
    centre = np.rint(volume.lps_to_index(np.asarray(centre_mm, dtype=np.float64))).astype(int)
    half = np.ceil(half_mm / volume.spacing_mm).astype(int)
    low = np.maximum(centre - half, 0)
    high = np.minimum(centre + half + 1, np.array(volume.shape[::-1]))
    voxels = volume.voxels[low[2] : high[2], low[1] : high[1], low[0] : high[0]]
    cut = Volume(voxels, volume.index_to_lps(low.astype(np.float64)), volume.spacing_mm, volume.direction)
    return dataclasses.replace(series, volume=cut, slices=series.slices[low[2] : high[2]])
