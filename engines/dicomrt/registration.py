"""DICOM Spatial Registration (rigid) and Deformable Spatial Registration objects, and their readers.

Both objects live in the planning CT's Frame of Reference (the *Registered* RCS) and its study.

* Spatial Registration Storage: one Registration Sequence item per frame: the CT's with the identity,
  the moving image's with the 4 x 4 matrix that maps a point of the MOVING frame (the item's, the
  *Source* RCS) to the CT's frame, i.e. ``RigidResult.matrix_moving_to_fixed``.
* Deformable Spatial Registration Storage: as the standard defines it, a CT point goes through the
  pre-deformation matrix (identity), the deformation grid (the B-spline displacement, on a regular
  grid over the CT) and the post-deformation matrix (the rigid FIXED -> MOVING matrix) to the moving
  frame (the item's Source Frame of Reference).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from scipy import ndimage

from rtgrid.engines.dicomrt.common import MANUFACTURER, new_rt_dataset
from rtgrid.engines.errors import EngineError
from rtgrid.engines.imaging.volume import ImageSeries, Volume
from rtgrid.engines.registration.deformable import DeformableResult
from rtgrid.engines.registration.rigid import RigidResult

SPATIAL_REGISTRATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.1"
DEFORMABLE_SPATIAL_REGISTRATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.3"
SOFTWARE_VERSION = "rtgrid registration 1"
# DICOM (DCM) codes of Registration Type Code Sequence: image-content-based registration.
IMAGE_CONTENT_BASED_ALIGNMENT = ("125024", "DCM", "Image Content-based Alignment")


class RegistrationObjectError(EngineError, ValueError):
    """A registration object cannot be written or read as asked; the message names the attribute."""


@dataclass(frozen=True)
class DeformableGrid:
    """What a Deformable Spatial Registration stores for one source frame.

    Attributes
    ----------
    source_frame_of_reference_uid : str
        The moving image's frame (Source RCS).
    pre_matrix, post_matrix : np.ndarray
        4 x 4 pre- and post-deformation matrices (LPS mm).
    grid : Volume
        Geometry of the deformation grid in the registered (CT) frame.
    vectors_mm : np.ndarray
        ``(nz, ny, nx, 3)`` displacements (mm) at the grid points.
    """

    source_frame_of_reference_uid: str
    pre_matrix: np.ndarray
    post_matrix: np.ndarray
    grid: Volume
    vectors_mm: np.ndarray

    def registered_to_source(self, points_mm: np.ndarray) -> np.ndarray:
        """Map ``(N, 3)`` CT-frame points to the source frame as the standard defines (trilinear grid)."""
        points = np.asarray(points_mm, dtype=np.float64).reshape(-1, 3)
        pre = points @ self.pre_matrix[:3, :3].T + self.pre_matrix[:3, 3]
        coords = self.grid.lps_to_index(pre)[:, ::-1].T
        offsets = np.column_stack(
            [ndimage.map_coordinates(self.vectors_mm[..., c], coords, order=1, mode="nearest") for c in range(3)]
        )
        moved = pre + offsets
        return moved @ self.post_matrix[:3, :3].T + self.post_matrix[:3, 3]


def write_spatial_registration(
    fixed: ImageSeries, moving: ImageSeries, result: RigidResult, *, description: str = "", label: str = "RTGRID_REG"
) -> Dataset:
    """A Spatial Registration object for a rigid registration of ``moving`` to the planning CT.

    Parameters
    ----------
    fixed : ImageSeries
        The planning CT: its patient, study and Frame of Reference (the Registered RCS).
    moving : ImageSeries
        The registered MR or PET.
    result : RigidResult
        Its ``matrix_moving_to_fixed`` is written for the moving frame.
    description : str
        Content Description (e.g. the final metric).
    label : str
        Content Label (a DICOM CS: capitals, digits, underscore; at most 16 characters).

    Returns
    -------
    pydicom.Dataset
        With file meta; save with ``ds.save_as(path, enforce_file_format=True)``.

    Raises
    ------
    RegistrationObjectError
        The series are of different patients, the result connects other frames than the series',
        a frame UID is empty, or the label is not a CS.
    """
    _check_frames(fixed, moving, result)
    ds = _common(fixed, moving, SPATIAL_REGISTRATION_STORAGE, description, label)
    items = []
    for series, matrix, comment in (
        (fixed, np.eye(4), "planning CT: identity"),
        (moving, result.matrix_moving_to_fixed, f"{moving.modality} to planning CT, rigid (Mattes MI)"),
    ):
        item = Dataset()
        item.FrameOfReferenceUID = series.frame_of_reference_uid
        item.ReferencedImageSequence = _image_references(series)
        matrix_registration = Dataset()
        matrix_registration.FrameOfReferenceTransformationComment = comment
        matrix_registration.RegistrationTypeCodeSequence = DicomSequence([_code(*IMAGE_CONTENT_BASED_ALIGNMENT)])
        matrix_registration.MatrixSequence = DicomSequence([_matrix_item(matrix)])
        item.MatrixRegistrationSequence = DicomSequence([matrix_registration])
        items.append(item)
    ds.RegistrationSequence = DicomSequence(items)
    return ds


def write_deformable_registration(
    fixed: ImageSeries, moving: ImageSeries, result: DeformableResult, *, description: str = "", label: str = "RTGRID_DREG"
) -> Dataset:
    """A Deformable Spatial Registration object for a B-spline registration of ``moving`` to the CT.

    Parameters
    ----------
    fixed : ImageSeries
        The planning CT (Registered RCS).
    moving : ImageSeries
        The registered MR or PET (Source RCS).
    result : DeformableResult
        Its displacement field becomes the Deformable Registration Grid; its rigid step the
        post-deformation matrix (FIXED -> MOVING); the pre-deformation matrix is the identity.
    description, label : str
        Content Description and Content Label, as for :func:`write_spatial_registration`.

    Returns
    -------
    pydicom.Dataset

    Raises
    ------
    RegistrationObjectError
        As for :func:`write_spatial_registration`.
    """
    _check_frames(fixed, moving, result.rigid)
    ds = _common(fixed, moving, DEFORMABLE_SPATIAL_REGISTRATION_STORAGE, description, label)
    item = Dataset()
    item.SourceFrameOfReferenceUID = moving.frame_of_reference_uid
    item.ReferencedImageSequence = _image_references(moving)
    item.FrameOfReferenceTransformationComment = f"{moving.modality} to planning CT: rigid then B-spline (Mattes MI)"
    item.RegistrationTypeCodeSequence = DicomSequence([_code(*IMAGE_CONTENT_BASED_ALIGNMENT)])
    item.PreDeformationMatrixRegistrationSequence = DicomSequence([_matrix_item(np.eye(4))])
    item.PostDeformationMatrixRegistrationSequence = DicomSequence([_matrix_item(result.rigid.matrix_fixed_to_moving)])
    grid = result.field.grid
    grid_item = Dataset()
    grid_item.ImagePositionPatient = [_ds(v) for v in grid.origin_mm]
    grid_item.ImageOrientationPatient = [_ds(v) for v in (*grid.direction[:, 0], *grid.direction[:, 1])]
    nz, ny, nx = grid.shape
    grid_item.GridDimensions = [nx, ny, nz]
    grid_item.GridResolution = [float(v) for v in grid.spacing_mm]
    grid_item.VectorGridData = np.ascontiguousarray(result.field.vectors_mm, dtype="<f4").tobytes()
    item.DeformableRegistrationGridSequence = DicomSequence([grid_item])
    ds.DeformableRegistrationSequence = DicomSequence([item])
    return ds


def read_spatial_registration(ds: Dataset) -> dict[str, np.ndarray]:
    """The 4 x 4 matrix of every frame of a Spatial Registration object.

    Parameters
    ----------
    ds : pydicom.Dataset
        A Spatial Registration Storage object.

    Returns
    -------
    dict[str, np.ndarray]
        Frame of Reference UID -> 4 x 4 matrix mapping that frame's points to the object's frame
        (LPS mm); matrices of one item are multiplied in sequence order.

    Raises
    ------
    RegistrationObjectError
        Not a Spatial Registration, or an item without its frame or matrix.
    """
    _check_sop_class(ds, SPATIAL_REGISTRATION_STORAGE, "RegistrationSequence")
    matrices = {}
    for index, item in enumerate(ds.RegistrationSequence):
        uid = str(item.get("FrameOfReferenceUID", "") or "")
        if not uid:
            raise RegistrationObjectError(f"RegistrationSequence item {index} has no FrameOfReferenceUID")
        total = np.eye(4)
        for registration in item.get("MatrixRegistrationSequence", []):
            for matrix_item in registration.get("MatrixSequence", []):
                total = _read_matrix(matrix_item, f"RegistrationSequence item {index}") @ total
        matrices[uid] = total
    return matrices


def read_deformable_registration(ds: Dataset) -> list[DeformableGrid]:
    """The deformation of every source frame of a Deformable Spatial Registration object.

    Raises
    ------
    RegistrationObjectError
        Not a Deformable Spatial Registration, or a grid whose data do not match its dimensions.
    """
    _check_sop_class(ds, DEFORMABLE_SPATIAL_REGISTRATION_STORAGE, "DeformableRegistrationSequence")
    grids = []
    for index, item in enumerate(ds.DeformableRegistrationSequence):
        where = f"DeformableRegistrationSequence item {index}"
        pre = _read_matrix(item.PreDeformationMatrixRegistrationSequence[0], where) if "PreDeformationMatrixRegistrationSequence" in item else np.eye(4)
        post = _read_matrix(item.PostDeformationMatrixRegistrationSequence[0], where) if "PostDeformationMatrixRegistrationSequence" in item else np.eye(4)
        grid_item = item.DeformableRegistrationGridSequence[0]
        nx, ny, nz = (int(v) for v in grid_item.GridDimensions)
        vectors = np.frombuffer(grid_item.VectorGridData, dtype="<f4")
        if vectors.size != nx * ny * nz * 3:
            raise RegistrationObjectError(
                f"{where}: VectorGridData holds {vectors.size} values, GridDimensions {nx} x {ny} x {nz} need {nx * ny * nz * 3}"
            )
        cosines = np.array([float(v) for v in grid_item.ImageOrientationPatient])
        direction = np.column_stack([cosines[:3], cosines[3:], np.cross(cosines[:3], cosines[3:])])
        grid = Volume(
            np.zeros((nz, ny, nx), dtype=np.float32),
            [float(v) for v in grid_item.ImagePositionPatient],
            [float(v) for v in grid_item.GridResolution],
            direction,
        )
        grids.append(
            DeformableGrid(str(item.SourceFrameOfReferenceUID), pre, post, grid, vectors.reshape(nz, ny, nx, 3).copy())
        )
    return grids


# --- internals ----------------------------------------------------------------------------------


def _common(fixed: ImageSeries, moving: ImageSeries, sop_class_uid: str, description: str, label: str) -> Dataset:
    if not label or len(label) > 16 or not all(c.isupper() or c.isdigit() or c in "_ " for c in label):
        raise RegistrationObjectError(f"Content Label {label!r} must be 1 to 16 capitals, digits, spaces or underscores")
    ds = new_rt_dataset(fixed, sop_class_uid, "REG")
    ds.SeriesDescription = f"{moving.modality} registered to planning CT"
    ds.Laterality = ""  # General Series, type 2C: the registered images are of no paired body part
    ds.FrameOfReferenceUID = fixed.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.ManufacturerModelName = MANUFACTURER
    ds.DeviceSerialNumber = "0"
    ds.SoftwareVersions = SOFTWARE_VERSION
    ds.ContentDate, ds.ContentTime = ds.InstanceCreationDate, ds.InstanceCreationTime
    ds.InstanceNumber = 1
    ds.ContentLabel = label
    ds.ContentDescription = description[:64]
    ds.ContentCreatorName = ""
    # Common Instance Reference: the images of both series, by study.
    in_study = [s for s in (fixed, moving) if s.study_instance_uid == fixed.study_instance_uid]
    elsewhere = [s for s in (fixed, moving) if s.study_instance_uid != fixed.study_instance_uid]
    ds.ReferencedSeriesSequence = DicomSequence([_series_reference(s) for s in in_study])
    if elsewhere:
        studies = []
        for series in elsewhere:
            study = Dataset()
            study.StudyInstanceUID = series.study_instance_uid
            study.ReferencedSeriesSequence = DicomSequence([_series_reference(series)])
            studies.append(study)
        ds.StudiesContainingOtherReferencedInstancesSequence = DicomSequence(studies)
    return ds


def _check_frames(fixed: ImageSeries, moving: ImageSeries, result: RigidResult) -> None:
    if fixed.patient_id != moving.patient_id:
        raise RegistrationObjectError(
            f"the {moving.modality} series is of PatientID {moving.patient_id!r}, the planning CT of "
            f"{fixed.patient_id!r}; one registration object links one patient's images"
        )
    for role, series in (("planning CT", fixed), (moving.modality, moving)):
        if not series.frame_of_reference_uid:
            raise RegistrationObjectError(f"the {role} series has an empty FrameOfReferenceUID")
        if not series.slices:
            raise RegistrationObjectError(f"the {role} series has no slice references")
    if (result.moving_frame_of_reference_uid, result.fixed_frame_of_reference_uid) != (
        moving.frame_of_reference_uid,
        fixed.frame_of_reference_uid,
    ):
        raise RegistrationObjectError(
            f"the result maps frame {result.moving_frame_of_reference_uid} -> {result.fixed_frame_of_reference_uid}, "
            f"not {moving.frame_of_reference_uid} -> {fixed.frame_of_reference_uid}"
        )


def _image_references(series: ImageSeries) -> DicomSequence:
    items = []
    for slice_ref in series.slices:
        item = Dataset()
        item.ReferencedSOPClassUID = slice_ref.sop_class_uid
        item.ReferencedSOPInstanceUID = slice_ref.sop_instance_uid
        items.append(item)
    return DicomSequence(items)


def _series_reference(series: ImageSeries) -> Dataset:
    item = Dataset()
    item.SeriesInstanceUID = series.series_instance_uid
    item.ReferencedInstanceSequence = _image_references(series)
    return item


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, scheme, meaning
    return code


def _matrix_item(matrix: np.ndarray) -> Dataset:
    item = Dataset()
    item.FrameOfReferenceTransformationMatrixType = "RIGID"
    item.FrameOfReferenceTransformationMatrix = [_ds(v) for v in np.asarray(matrix, dtype=np.float64).reshape(-1)]
    return item


def _read_matrix(item: Dataset, where: str) -> np.ndarray:
    values = item.get("FrameOfReferenceTransformationMatrix")
    if values is None or len(values) != 16:
        raise RegistrationObjectError(f"{where}: FrameOfReferenceTransformationMatrix must hold 16 values")
    return np.array([float(v) for v in values]).reshape(4, 4)


def _check_sop_class(ds: Dataset, sop_class: str, sequence: str) -> None:
    found = str(ds.get("SOPClassUID", "") or "")
    if found != sop_class or sequence not in ds:
        raise RegistrationObjectError(
            f"dataset is not the expected registration object (SOP Class UID {found!r}, expected {sop_class}; "
            f"{sequence} {'present' if sequence in ds else 'missing'})"
        )


def _ds(value: float) -> str:
    """A DICOM DS of at most 16 characters (rounding 0 of -0)."""
    text = f"{float(value) + 0.0:.10g}"
    if len(text) > 16:
        text = f"{float(value):.9g}"
    return text
