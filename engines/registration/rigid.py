"""Rigid registration of an MR or PET series to the planning CT (SimpleITK).

Mattes mutual information (histogram bins, a fixed fraction of randomly sampled voxels with a fixed
seed, so a run repeats exactly), a regular-step gradient descent on an Euler 3-D transform started
from a centred initialisation, and a multi-resolution pyramid (shrink factors and smoothing in mm).
Every level has an iteration bound and the whole run a time budget.

Direction convention (everywhere in rtgrid): the result's 4 x 4 matrix maps a point given in the
MOVING image's patient coordinates (LPS, mm, its own Frame of Reference) to the same anatomical
point in the FIXED image's (the planning CT's) patient coordinates. This is the matrix a DICOM
Spatial Registration whose Frame of Reference is the CT's stores for the moving frame.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from rtgrid.engines.imaging.volume import ImageSeries, Volume
from rtgrid.engines.registration.errors import NoOverlapError, RegistrationError, RegistrationFailedError
from rtgrid.engines.registration.images import check_overlap, check_pair, from_sitk, to_sitk

INITIALISATIONS = ("geometry", "moments", "none")


@dataclass(frozen=True)
class RigidSettings:
    """How ``register_rigid`` runs; the defaults suit head-and-neck CT with MR or PET.

    Attributes
    ----------
    histogram_bins : int
        Mattes mutual information histogram bins.
    sampling_fraction : float
        Fraction of fixed voxels sampled (randomly, with ``seed``) for the metric at full resolution,
        in (0, 1]; a level shrunk by ``f`` samples ``f`` times that fraction (at most all voxels).
    seed : int
        Sampling seed: the same inputs and settings sample the same voxels, so a run repeats to a
        few hundredths of a mm (not bitwise: SimpleITK's threads sum in varying order).
    shrink_factors : tuple of int
        Pyramid levels, coarse to fine (1 = full resolution).
    smoothing_sigmas_mm : tuple of float
        Gaussian smoothing per level, mm.
    max_iterations : int
        Iteration bound of the optimizer per level.
    learning_rate : float
        First step of the regular-step gradient descent (in the scaled parameter space, ~mm).
    min_step : float
        The descent stops when its step falls below this.
    time_budget_s : float
        Wall seconds after which the optimizer is stopped and the best position so far returned.
    initialisation : str
        ``"geometry"`` (image centres aligned), ``"moments"`` (intensity centres of mass aligned) or
        ``"none"`` (the scanners' coordinates are trusted as they are).
    minimum_overlap : float
        Fraction of the CT's body that must lie inside the moving image, before and after.
    threads : int or None
        SimpleITK threads for the registration; ``None`` keeps SimpleITK's default.
    """

    histogram_bins: int = 50
    sampling_fraction: float = 0.3
    seed: int = 20241
    shrink_factors: tuple[int, ...] = (4, 2, 1)
    smoothing_sigmas_mm: tuple[float, ...] = (8.0, 4.0, 0.0)
    max_iterations: int = 300
    learning_rate: float = 4.0
    min_step: float = 1e-3
    time_budget_s: float = 120.0
    initialisation: str = "geometry"
    minimum_overlap: float = 0.2
    threads: int | None = None

    def __post_init__(self) -> None:
        if not 0 < self.sampling_fraction <= 1:
            raise RegistrationError(f"sampling_fraction {self.sampling_fraction} must lie in (0, 1]")
        if len(self.shrink_factors) != len(self.smoothing_sigmas_mm) or not self.shrink_factors:
            raise RegistrationError(
                f"shrink_factors {self.shrink_factors} and smoothing_sigmas_mm {self.smoothing_sigmas_mm} "
                "must name the same (non-zero) number of levels"
            )
        if any(f < 1 for f in self.shrink_factors) or any(s < 0 for s in self.smoothing_sigmas_mm):
            raise RegistrationError("shrink factors must be >= 1 and smoothing sigmas >= 0 mm")
        if not 1 <= self.max_iterations <= 10000:
            raise RegistrationError(f"max_iterations {self.max_iterations} must lie in 1..10000")
        if not 0 < self.time_budget_s <= 3600:
            raise RegistrationError(f"time_budget_s {self.time_budget_s} must lie in (0, 3600] s")
        if self.initialisation not in INITIALISATIONS:
            raise RegistrationError(f"initialisation {self.initialisation!r} is not one of {INITIALISATIONS}")
        if not 8 <= self.histogram_bins <= 256:
            raise RegistrationError(f"histogram_bins {self.histogram_bins} must lie in 8..256")
        if not 0 <= self.minimum_overlap <= 1:
            raise RegistrationError(f"minimum_overlap {self.minimum_overlap} must lie in [0, 1]")


@dataclass(frozen=True)
class RigidResult:
    """A rigid registration of a moving MR/PET series to the fixed planning CT.

    Attributes
    ----------
    matrix_moving_to_fixed : np.ndarray
        4 x 4 homogeneous matrix in DICOM patient coordinates (LPS, mm) that maps a point of the
        MOVING frame of reference to the FIXED (CT) frame: ``x_fixed = M @ [x_moving, 1]``.
    rotation_deg : np.ndarray
        ``(rx, ry, rz)`` degrees of that matrix's rotation, ``R = Rz(rz) @ Ry(ry) @ Rx(rx)``
        (rotations about the fixed LPS axes, first x).
    translation_mm : np.ndarray
        The matrix's translation column, mm.
    final_metric : float
        Mattes mutual information at the end (negative; lower is better).
    iterations : int
        Optimizer iterations run, all levels together.
    elapsed_s : float
        Wall seconds of the optimization.
    stopped_by_budget : bool
        True when ``time_budget_s`` ended the run before the optimizer converged.
    stop_condition : str
        SimpleITK's words for why the last level stopped.
    overlap_fraction : float
        Fraction of the CT's body inside the moving image after registration.
    fixed_frame_of_reference_uid, moving_frame_of_reference_uid : str
        The two frames the matrix connects.
    settings : RigidSettings
        What the run used.
    """

    matrix_moving_to_fixed: np.ndarray
    rotation_deg: np.ndarray
    translation_mm: np.ndarray
    final_metric: float
    iterations: int
    elapsed_s: float
    stopped_by_budget: bool
    stop_condition: str
    overlap_fraction: float
    fixed_frame_of_reference_uid: str
    moving_frame_of_reference_uid: str
    settings: RigidSettings = field(default_factory=RigidSettings)

    @property
    def matrix_fixed_to_moving(self) -> np.ndarray:
        """The inverse 4 x 4 (a CT point -> the same point in the moving frame, LPS mm)."""
        return np.linalg.inv(self.matrix_moving_to_fixed)

    def moving_to_fixed(self, points_mm: np.ndarray) -> np.ndarray:
        """Map ``(N, 3)`` moving-frame LPS points (mm) to the CT frame (exact for a rigid result)."""
        return apply_matrix(self.matrix_moving_to_fixed, points_mm)

    def fixed_to_moving(self, points_mm: np.ndarray) -> np.ndarray:
        """Map ``(N, 3)`` CT-frame LPS points (mm) to the moving frame."""
        return apply_matrix(self.matrix_fixed_to_moving, points_mm)


def apply_matrix(matrix: np.ndarray, points_mm: np.ndarray) -> np.ndarray:
    """Apply a 4 x 4 homogeneous matrix to ``(N, 3)`` points (mm)."""
    points = np.asarray(points_mm, dtype=np.float64).reshape(-1, 3)
    return points @ matrix[:3, :3].T + matrix[:3, 3]


def euler_zyx_deg(rotation: np.ndarray) -> np.ndarray:
    """``(rx, ry, rz)`` degrees with ``rotation = Rz(rz) @ Ry(ry) @ Rx(rx)``."""
    ry = -np.arcsin(np.clip(rotation[2, 0], -1.0, 1.0))
    rx = np.arctan2(rotation[2, 1], rotation[2, 2])
    rz = np.arctan2(rotation[1, 0], rotation[0, 0])
    return np.degrees([rx, ry, rz])


def rigid_matrix(rotation_deg: np.ndarray, translation_mm: np.ndarray) -> np.ndarray:
    """The 4 x 4 of ``Rz @ Ry @ Rx`` (degrees about x, y, z) followed by a translation (mm)."""
    rx, ry, rz = np.radians(np.asarray(rotation_deg, dtype=np.float64))
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    r_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    r_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    r_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    matrix = np.eye(4)
    matrix[:3, :3] = r_z @ r_y @ r_x
    matrix[:3, 3] = np.asarray(translation_mm, dtype=np.float64)
    return matrix


def register_rigid(fixed: ImageSeries, moving: ImageSeries, settings: RigidSettings | None = None) -> RigidResult:
    """Find the rigid transform that aligns an MR or PET series with the planning CT.

    Parameters
    ----------
    fixed : ImageSeries
        The planning CT (modality ``CT``), HU.
    moving : ImageSeries
        An MR (``MR``) or PET (``PT``) series, with its own Frame of Reference or the CT's.
    settings : RigidSettings, optional
        Metric, pyramid, bounds and seed; ``RigidSettings()`` when omitted.

    Returns
    -------
    RigidResult
        The 4 x 4 matrix MOVING -> FIXED in LPS mm, its angles and translation, the final metric.

    Raises
    ------
    RegistrationModalityError
        The fixed series is not CT or the moving one is not MR or PT.
    PatientMismatchError
        The two series name different PatientIDs.
    EmptyImageError
        An image without voxels or with one value everywhere.
    NoOverlapError
        Less than ``settings.minimum_overlap`` of the CT's body lies in the moving image, before
        (after the initialisation) or after the registration; or SimpleITK found no sample inside.
    RegistrationFailedError
        SimpleITK failed for another reason (its message is kept).
    """
    settings = settings or RigidSettings()
    check_pair(fixed, moving)
    fixed_image, moving_image = to_sitk(fixed.volume), to_sitk(moving.volume)
    initial = _initial_transform(fixed_image, moving_image, settings.initialisation)
    initial_matrix = _euler_matrix(initial)
    check_overlap(fixed, moving, lambda p: apply_matrix(initial_matrix, p), settings.minimum_overlap, "before")

    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=settings.histogram_bins)
    method.SetMetricSamplingStrategy(method.RANDOM)
    # Coarse levels have few voxels: sample more of them (fraction x shrink factor, at most all),
    # or the metric is too noisy for the descent to settle before its iteration bound.
    per_level = [min(1.0, settings.sampling_fraction * factor) for factor in settings.shrink_factors]
    method.SetMetricSamplingPercentagePerLevel(per_level, settings.seed)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=settings.learning_rate,
        minStep=settings.min_step,
        numberOfIterations=settings.max_iterations,
        relaxationFactor=0.5,
        gradientMagnitudeTolerance=1e-8,
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(list(settings.shrink_factors))
    method.SetSmoothingSigmasPerLevel(list(settings.smoothing_sigmas_mm))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    if settings.threads is not None:
        method.SetNumberOfThreads(settings.threads)
    transform = sitk.Euler3DTransform(initial)
    method.SetInitialTransform(transform, inPlace=True)
    run = _run_bounded(method, fixed_image, moving_image, settings.time_budget_s)

    matrix_fixed_to_moving = _euler_matrix(transform)
    matrix = np.linalg.inv(matrix_fixed_to_moving)
    overlap = check_overlap(
        fixed, moving, lambda p: apply_matrix(matrix_fixed_to_moving, p), settings.minimum_overlap, "after"
    )
    return RigidResult(
        matrix_moving_to_fixed=matrix,
        rotation_deg=euler_zyx_deg(matrix[:3, :3]),
        translation_mm=matrix[:3, 3].copy(),
        final_metric=run.metric,
        iterations=run.iterations,
        elapsed_s=run.elapsed_s,
        stopped_by_budget=run.stopped_by_budget,
        stop_condition=run.stop_condition,
        overlap_fraction=overlap,
        fixed_frame_of_reference_uid=fixed.frame_of_reference_uid,
        moving_frame_of_reference_uid=moving.frame_of_reference_uid,
        settings=settings,
    )


def resample_to_fixed(fixed: Volume, moving: Volume, matrix_moving_to_fixed: np.ndarray, default: float = 0.0) -> Volume:
    """The moving image resampled (linear) onto the fixed grid through a rigid MOVING -> FIXED matrix.

    Parameters
    ----------
    fixed : Volume
        The grid to resample on (the CT).
    moving : Volume
        The MR or PET.
    matrix_moving_to_fixed : np.ndarray
        4 x 4, LPS mm, as in :class:`RigidResult`.
    default : float
        Value of CT voxels that fall outside the moving image.

    Returns
    -------
    Volume
        float32 voxels on ``fixed``'s grid.
    """
    inverse = np.linalg.inv(np.asarray(matrix_moving_to_fixed, dtype=np.float64))
    transform = sitk.AffineTransform(3)
    transform.SetMatrix(tuple(inverse[:3, :3].reshape(-1)))
    transform.SetTranslation(tuple(inverse[:3, 3]))
    return _resample(fixed, moving, transform, default)


# --- internals ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Run:
    metric: float
    iterations: int
    elapsed_s: float
    stopped_by_budget: bool
    stop_condition: str


def _run_bounded(
    method: sitk.ImageRegistrationMethod, fixed_image: sitk.Image, moving_image: sitk.Image, budget_s: float
) -> _Run:
    """Execute with an iteration observer that stops the optimizer once the time budget is spent."""
    started = time.monotonic()
    state = {"iterations": 0, "stopped": False}

    def on_iteration() -> None:
        state["iterations"] += 1
        if time.monotonic() - started > budget_s:
            state["stopped"] = True
            method.StopRegistration()

    method.AddCommand(sitk.sitkIterationEvent, on_iteration)
    method.AddCommand(sitk.sitkMultiResolutionIterationEvent, lambda: state["stopped"] and method.StopRegistration())
    try:
        method.Execute(fixed_image, moving_image)
    except RuntimeError as exc:
        text = str(exc)
        if "outside" in text or "Too many samples" in text or "insufficient" in text.lower():
            raise NoOverlapError(f"the images do not overlap enough to measure mutual information: {_last_line(text)}") from exc
        raise RegistrationFailedError(f"SimpleITK registration failed: {_last_line(text)}") from exc
    return _Run(
        metric=float(method.GetMetricValue()),
        iterations=int(state["iterations"]),
        elapsed_s=time.monotonic() - started,
        stopped_by_budget=bool(state["stopped"]),
        stop_condition=method.GetOptimizerStopConditionDescription(),
    )


def _initial_transform(fixed_image: sitk.Image, moving_image: sitk.Image, how: str) -> sitk.Euler3DTransform:
    if how == "none":
        transform = sitk.Euler3DTransform()
        centre = fixed_image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in fixed_image.GetSize()])
        transform.SetCenter(centre)
        return transform
    mode = (
        sitk.CenteredTransformInitializerFilter.GEOMETRY
        if how == "geometry"
        else sitk.CenteredTransformInitializerFilter.MOMENTS
    )
    return sitk.Euler3DTransform(sitk.CenteredTransformInitializer(fixed_image, moving_image, sitk.Euler3DTransform(), mode))


def _euler_matrix(transform: sitk.Euler3DTransform) -> np.ndarray:
    """The 4 x 4 FIXED -> MOVING matrix of ``p_m = R (p_f - c) + c + t``."""
    rotation = np.array(transform.GetMatrix()).reshape(3, 3)
    centre = np.array(transform.GetCenter())
    matrix = np.eye(4)
    matrix[:3, :3] = rotation
    matrix[:3, 3] = centre + np.array(transform.GetTranslation()) - rotation @ centre
    return matrix


def _resample(fixed: Volume, moving: Volume, transform: sitk.Transform, default: float) -> Volume:
    reference = to_sitk(fixed.with_voxels(np.zeros(fixed.shape, dtype=np.float32)))
    out = sitk.Resample(to_sitk(moving), reference, transform, sitk.sitkLinear, float(default), sitk.sitkFloat32)
    return from_sitk(out)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else text
