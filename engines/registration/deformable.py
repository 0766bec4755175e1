"""Optional deformable (B-spline) registration after the rigid one, and its displacement field.

The B-spline is optimized on top of a :class:`RigidResult` (SimpleITK's moving initial transform),
so the full mapping of a CT point ``x`` (LPS, mm) to the moving frame is::

    x_moving = rigid.fixed_to_moving(x + u(x))

with ``u`` the B-spline displacement (mm) sampled in :class:`DisplacementField`. Its inverse,
MOVING -> FIXED (what contours drawn on the moving image need), is solved point by point.
This is the order a DICOM Deformable Spatial Registration stores: pre-deformation matrix
(identity), deformation grid (``u``), post-deformation matrix (the rigid FIXED -> MOVING matrix).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from rtgrid.engines.imaging.volume import ImageSeries, Volume
from rtgrid.engines.registration.errors import RegistrationError
from rtgrid.engines.registration.images import CT_BODY_THRESHOLD_HU, check_pair, to_sitk
from rtgrid.engines.registration.rigid import RigidResult, _resample, _run_bounded

INVERSE_TOLERANCE_MM = 1e-3
INVERSE_MAX_ITERATIONS = 50


@dataclass(frozen=True)
class DeformableSettings:
    """How ``register_deformable`` runs.

    Attributes
    ----------
    grid_spacing_mm : float
        Spacing of the B-spline control grid over the CT, mm (larger = stiffer).
    histogram_bins, sampling_fraction, seed
        Mattes mutual information and its repeatable random sampling, as for the rigid step.
    shrink_factors, smoothing_sigmas_mm
        Pyramid levels, coarse to fine.
    max_iterations : int
        Iteration bound per level of the line-search gradient descent.
    learning_rate : float
        Largest step of the line search (mm of control-point displacement per unit gradient).
    time_budget_s : float
        Wall seconds after which the optimizer is stopped.
    field_spacing_mm : float
        Spacing of the sampled displacement field (also the DICOM deformation grid), mm.
    threads : int or None
        SimpleITK threads; ``None`` keeps SimpleITK's default.
    """

    grid_spacing_mm: float = 80.0
    histogram_bins: int = 50
    sampling_fraction: float = 0.05
    seed: int = 20242
    shrink_factors: tuple[int, ...] = (2, 1)
    smoothing_sigmas_mm: tuple[float, ...] = (4.0, 0.0)
    max_iterations: int = 20
    learning_rate: float = 5.0
    time_budget_s: float = 120.0
    field_spacing_mm: float = 8.0
    threads: int | None = None

    def __post_init__(self) -> None:
        if not 10.0 <= self.grid_spacing_mm <= 500.0:
            raise RegistrationError(f"grid_spacing_mm {self.grid_spacing_mm} must lie in 10..500 mm")
        if not 1.0 <= self.field_spacing_mm <= 50.0:
            raise RegistrationError(f"field_spacing_mm {self.field_spacing_mm} must lie in 1..50 mm")
        if not 0 < self.sampling_fraction <= 1:
            raise RegistrationError(f"sampling_fraction {self.sampling_fraction} must lie in (0, 1]")
        if len(self.shrink_factors) != len(self.smoothing_sigmas_mm) or not self.shrink_factors:
            raise RegistrationError("shrink_factors and smoothing_sigmas_mm must name the same (non-zero) number of levels")
        if not 1 <= self.max_iterations <= 1000:
            raise RegistrationError(f"max_iterations {self.max_iterations} must lie in 1..1000")
        if not 0 < self.time_budget_s <= 3600:
            raise RegistrationError(f"time_budget_s {self.time_budget_s} must lie in (0, 3600] s")


@dataclass(frozen=True)
class BSplineGrid:
    """The cubic B-spline control grid (SimpleITK's fixed parameters) and its coefficients.

    Attributes
    ----------
    mesh_size : tuple of int
        Control-grid cells along i, j, k of the CT (points = mesh + order).
    origin_mm, spacing_mm : np.ndarray
        LPS origin and spacing (mm) of the control points.
    direction : np.ndarray
        3 x 3, columns the LPS axes of the control grid (the CT's).
    coefficients_mm : np.ndarray
        ``(3, nk, nj, ni)`` displacement coefficients (mm) along LPS x, y, z.
    """

    mesh_size: tuple[int, int, int]
    origin_mm: np.ndarray
    spacing_mm: np.ndarray
    direction: np.ndarray
    coefficients_mm: np.ndarray


@dataclass(frozen=True)
class DisplacementField:
    """A displacement field ``u`` (mm) sampled on a regular LPS grid over the CT.

    Attributes
    ----------
    vectors_mm : np.ndarray
        ``(nz, ny, nx, 3)`` float32: ``u`` (LPS x, y, z; mm) at each grid point.
    grid : Volume
        The geometry of the samples (its voxels are ``|u|`` in mm, for display).
    """

    vectors_mm: np.ndarray
    grid: Volume

    def at(self, points_mm: np.ndarray) -> np.ndarray:
        """``u`` at ``(N, 3)`` LPS points (trilinear; outside the grid the nearest edge value)."""
        ijk = self.grid.lps_to_index(np.asarray(points_mm, dtype=np.float64).reshape(-1, 3))
        coords = ijk[:, ::-1].T  # (k, j, i) rows for map_coordinates
        return np.column_stack(
            [ndimage.map_coordinates(self.vectors_mm[..., c], coords, order=1, mode="nearest") for c in range(3)]
        )


@dataclass(frozen=True)
class DeformableResult:
    """A rigid registration refined by a B-spline deformation.

    Attributes
    ----------
    rigid : RigidResult
        The rigid step it started from (its matrix maps MOVING -> FIXED).
    bspline : BSplineGrid
        The optimized control grid.
    field : DisplacementField
        The B-spline displacement ``u`` on a regular grid over the CT: a CT point ``x`` corresponds
        to the moving-frame point ``rigid.fixed_to_moving(x + u(x))``.
    final_metric : float
        Mattes mutual information at the end.
    iterations : int
        Optimizer iterations, all levels.
    elapsed_s : float
        Wall seconds of the deformable optimization.
    stopped_by_budget : bool
        True when the time budget ended the run.
    stop_condition : str
        SimpleITK's words for why the last level stopped.
    settings : DeformableSettings
    """

    rigid: RigidResult
    bspline: BSplineGrid
    field: DisplacementField
    final_metric: float
    iterations: int
    elapsed_s: float
    stopped_by_budget: bool
    stop_condition: str
    settings: DeformableSettings = field(default_factory=DeformableSettings)

    def fixed_to_moving(self, points_mm: np.ndarray) -> np.ndarray:
        """Map ``(N, 3)`` CT-frame LPS points (mm) to the moving frame."""
        points = np.asarray(points_mm, dtype=np.float64).reshape(-1, 3)
        return self.rigid.fixed_to_moving(points + self.field.at(points))

    def moving_to_fixed(self, points_mm: np.ndarray) -> np.ndarray:
        """Map ``(N, 3)`` moving-frame LPS points (mm) to the CT frame (inverse of the field).

        Solves ``x + u(x) = y`` with ``y = rigid.moving_to_fixed(p)`` by fixed-point iteration
        (converges while the field's gradient stays below 1, which the control grid keeps).
        """
        target = self.rigid.moving_to_fixed(points_mm)
        x = target - self.field.at(target)
        for _ in range(INVERSE_MAX_ITERATIONS):
            update = target - self.field.at(x)
            if np.max(np.abs(update - x), initial=0.0) < INVERSE_TOLERANCE_MM:
                return update
            x = update
        return x


def register_deformable(
    fixed: ImageSeries, moving: ImageSeries, rigid: RigidResult, settings: DeformableSettings | None = None
) -> DeformableResult:
    """Refine a rigid registration with a cubic B-spline (Mattes mutual information, line-search gradient descent).

    Parameters
    ----------
    fixed : ImageSeries
        The planning CT.
    moving : ImageSeries
        The MR or PET that ``rigid`` registered.
    rigid : RigidResult
        The rigid result to start from (MOVING -> FIXED).
    settings : DeformableSettings, optional

    Returns
    -------
    DeformableResult
        The control grid, the sampled displacement field and both directions of the mapping.

    Raises
    ------
    RegistrationModalityError, EmptyImageError
        As for :func:`register_rigid`.
    RegistrationError
        ``rigid`` belongs to other frames of reference than the two series.
    NoOverlapError, RegistrationFailedError
        SimpleITK could not measure the metric, or failed otherwise.
    """
    settings = settings or DeformableSettings()
    check_pair(fixed, moving)
    if (rigid.fixed_frame_of_reference_uid, rigid.moving_frame_of_reference_uid) != (
        fixed.frame_of_reference_uid,
        moving.frame_of_reference_uid,
    ):
        raise RegistrationError(
            f"the rigid result connects frames {rigid.moving_frame_of_reference_uid} -> "
            f"{rigid.fixed_frame_of_reference_uid}, not the moving series' {moving.frame_of_reference_uid} "
            f"-> the CT's {fixed.frame_of_reference_uid}"
        )
    fixed_image, moving_image = to_sitk(fixed.volume), to_sitk(moving.volume)
    extent_mm = np.array(fixed_image.GetSize()) * np.array(fixed_image.GetSpacing())
    mesh = [max(1, math.ceil(e / settings.grid_spacing_mm)) for e in extent_mm]
    bspline = sitk.BSplineTransformInitializer(fixed_image, mesh, 3)

    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=settings.histogram_bins)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(settings.sampling_fraction, settings.seed)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetMetricFixedMask(_body_mask(fixed.volume))
    # A gradient descent with line search: unlike L-BFGS-B (vnl), it stops when asked, so the
    # time budget holds.
    method.SetOptimizerAsGradientDescentLineSearch(
        learningRate=settings.learning_rate,
        numberOfIterations=settings.max_iterations,
        convergenceMinimumValue=1e-5,
        convergenceWindowSize=5,
    )
    method.SetShrinkFactorsPerLevel(list(settings.shrink_factors))
    method.SetSmoothingSigmasPerLevel(list(settings.smoothing_sigmas_mm))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    if settings.threads is not None:
        method.SetNumberOfThreads(settings.threads)
    method.SetMovingInitialTransform(_affine(rigid.matrix_fixed_to_moving))
    method.SetInitialTransform(bspline, inPlace=True)
    run = _run_bounded(method, fixed_image, moving_image, settings.time_budget_s)

    grid = _bspline_grid(bspline, mesh)
    return DeformableResult(
        rigid=rigid,
        bspline=grid,
        field=_sample_field(bspline, fixed.volume, settings.field_spacing_mm),
        final_metric=run.metric,
        iterations=run.iterations,
        elapsed_s=run.elapsed_s,
        stopped_by_budget=run.stopped_by_budget,
        stop_condition=run.stop_condition,
        settings=settings,
    )


def resample_deformed(fixed: Volume, moving: Volume, result: DeformableResult, default: float = 0.0) -> Volume:
    """The moving image on the CT grid through the full (rigid + B-spline) mapping; float32."""
    composite = sitk.CompositeTransform([_affine(result.rigid.matrix_fixed_to_moving), bspline_transform(result.bspline)])
    return _resample(fixed, moving, composite, default)


def bspline_transform(grid: BSplineGrid) -> sitk.BSplineTransform:
    """Rebuild the SimpleITK B-spline (FIXED -> pre-rigid displacement) from a :class:`BSplineGrid`."""
    transform = sitk.BSplineTransform(3, 3)
    size = [m + 3 for m in grid.mesh_size]
    transform.SetFixedParameters(
        [*map(float, size), *map(float, grid.origin_mm), *map(float, grid.spacing_mm), *map(float, grid.direction.reshape(-1))]
    )
    transform.SetParameters(tuple(float(v) for v in grid.coefficients_mm.reshape(-1)))
    return transform


def _bspline_grid(transform: sitk.BSplineTransform, mesh: list[int]) -> BSplineGrid:
    fixed = np.array(transform.GetFixedParameters())
    size = fixed[0:3].astype(int)
    return BSplineGrid(
        mesh_size=tuple(int(m) for m in mesh),
        origin_mm=fixed[3:6].copy(),
        spacing_mm=fixed[6:9].copy(),
        direction=fixed[9:18].reshape(3, 3).copy(),
        coefficients_mm=np.array(transform.GetParameters()).reshape(3, size[2], size[1], size[0]),
    )


def _sample_field(transform: sitk.Transform, ct: Volume, spacing_mm: float) -> DisplacementField:
    extent = (np.array(ct.shape[::-1]) - 1) * ct.spacing_mm
    size = [int(n) for n in np.floor(extent / spacing_mm).astype(int) + 1]
    spacing = np.full(3, float(spacing_mm))
    to_field = sitk.TransformToDisplacementFieldFilter()
    to_field.SetOutputPixelType(sitk.sitkVectorFloat64)
    to_field.SetSize(size)
    to_field.SetOutputOrigin(tuple(float(v) for v in ct.origin_mm))
    to_field.SetOutputSpacing(tuple(spacing))
    to_field.SetOutputDirection(tuple(float(v) for v in ct.direction.reshape(-1)))
    vectors = sitk.GetArrayFromImage(to_field.Execute(transform)).astype(np.float32)
    grid = Volume(np.linalg.norm(vectors, axis=-1), ct.origin_mm, spacing, ct.direction)
    return DisplacementField(vectors_mm=vectors, grid=grid)


def _body_mask(ct: Volume) -> sitk.Image:
    """The CT's body grown by two voxels: the metric ignores the air (and its noise) around the patient."""
    body = ndimage.binary_dilation(ct.voxels > CT_BODY_THRESHOLD_HU, iterations=2)
    return sitk.Cast(to_sitk(ct.with_voxels(body.astype(np.float32))), sitk.sitkUInt8)


def _affine(matrix: np.ndarray) -> sitk.AffineTransform:
    transform = sitk.AffineTransform(3)
    transform.SetMatrix(tuple(float(v) for v in matrix[:3, :3].reshape(-1)))
    transform.SetTranslation(tuple(float(v) for v in matrix[:3, 3]))
    return transform


__all__ = [
    "BSplineGrid",
    "DeformableResult",
    "DeformableSettings",
    "DisplacementField",
    "bspline_transform",
    "register_deformable",
    "resample_deformed",
]
