"""Image volumes on a regular grid in DICOM patient coordinates (LPS, millimetres).

Array layout everywhere in rtgrid: ``voxels[k, j, i]`` — slice ``k``, row ``j``, column ``i``.
The physical position of voxel centre ``(i, j, k)`` is::

    origin_mm + direction @ (spacing_mm * (i, j, k))

with ``spacing_mm = (column spacing, row spacing, slice spacing)`` and the columns of
``direction`` the unit vectors of the ``i``, ``j`` and ``k`` axes in LPS.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Volume:
    """A 3-D image with exact LPS geometry.

    Attributes
    ----------
    voxels : np.ndarray
        Shape ``(nz, ny, nx)``; HU for CT (``int16`` or ``float32``), ``bool``/``uint8`` for masks.
    origin_mm : np.ndarray
        LPS position (mm) of the centre of voxel ``(0, 0, 0)``, shape ``(3,)``.
    spacing_mm : np.ndarray
        ``(di, dj, dk)`` in mm: column, row and slice spacing.
    direction : np.ndarray
        ``3 x 3``; column ``c`` is the LPS unit vector of array axis ``i``, ``j``, ``k`` for c = 0, 1, 2.
    """

    voxels: np.ndarray
    origin_mm: np.ndarray
    spacing_mm: np.ndarray
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))

    def __post_init__(self) -> None:
        object.__setattr__(self, "origin_mm", np.asarray(self.origin_mm, dtype=np.float64).reshape(3))
        object.__setattr__(self, "spacing_mm", np.asarray(self.spacing_mm, dtype=np.float64).reshape(3))
        object.__setattr__(self, "direction", np.asarray(self.direction, dtype=np.float64).reshape(3, 3))
        if self.voxels.ndim != 3:
            raise ValueError(f"voxels must be 3-D (nz, ny, nx), got shape {self.voxels.shape}")
        if np.any(self.spacing_mm <= 0):
            raise ValueError(f"spacing_mm must be positive, got {self.spacing_mm.tolist()}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(nz, ny, nx)``."""
        return tuple(self.voxels.shape)  # type: ignore[return-value]

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing_mm))

    def index_to_lps(self, ijk: np.ndarray) -> np.ndarray:
        """Map ``(..., 3)`` continuous indices ``(i, j, k)`` to LPS positions in mm."""
        ijk = np.asarray(ijk, dtype=np.float64)
        return self.origin_mm + (ijk * self.spacing_mm) @ self.direction.T

    def lps_to_index(self, xyz_mm: np.ndarray) -> np.ndarray:
        """Map ``(..., 3)`` LPS positions in mm to continuous indices ``(i, j, k)``."""
        xyz_mm = np.asarray(xyz_mm, dtype=np.float64)
        return ((xyz_mm - self.origin_mm) @ self.direction) / self.spacing_mm

    def with_voxels(self, voxels: np.ndarray) -> "Volume":
        """Same geometry, other voxels (e.g. a mask on this CT's grid)."""
        if voxels.shape != self.voxels.shape:
            raise ValueError(f"shape {voxels.shape} does not match the grid {self.voxels.shape}")
        return Volume(voxels, self.origin_mm, self.spacing_mm, self.direction)

    def same_grid(self, other: "Volume", tol_mm: float = 1e-3) -> bool:
        """True when ``other`` lies on exactly this grid (shape, origin, spacing, direction)."""
        return (
            self.shape == other.shape
            and np.allclose(self.origin_mm, other.origin_mm, atol=tol_mm)
            and np.allclose(self.spacing_mm, other.spacing_mm, atol=tol_mm)
            and np.allclose(self.direction, other.direction, atol=1e-6)
        )


@dataclass(frozen=True)
class SliceRef:
    """What a DICOM RT object needs to reference one image slice.

    ``sop_instance_uid`` is the UID the hospital holds for that slice: the dataset's own, or the
    file meta header's MediaStorageSOPInstanceUID when the dataset's is empty.
    """

    sop_class_uid: str
    sop_instance_uid: str
    z_index: int
    position_mm: tuple[float, float, float]


@dataclass(frozen=True)
class ImageSeries:
    """A validated image series: the volume plus the identity a planning system needs.

    ``slices[k]`` is the slice at ``volume.voxels[k]``.
    """

    volume: Volume
    modality: str
    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str
    slices: tuple[SliceRef, ...]
    patient_id: str = ""
    patient_name: str = ""
    patient_birth_date: str = ""
    patient_sex: str = ""
    study_id: str = ""
    study_date: str = ""
    study_time: str = ""
    accession_number: str = ""
    referring_physician_name: str = ""
    notes: tuple[str, ...] = ()
    """What intake repaired or inferred (e.g. UIDs taken from the file meta), for the audit trail."""
