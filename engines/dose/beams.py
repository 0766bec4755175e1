"""Beam geometry: IEC 61217 gantry / couch / collimator angles mapped to DICOM patient coordinates
(LPS), and the bixel (beamlet) grid of a beam.

Convention (head-first supine, HFS, the only patient position supported): with the couch at 0 the
IEC fixed system maps to LPS as ``X_f = +L`` (patient left), ``Y_f = +S`` (towards the gantry),
``Z_f = -P`` (anterior, up). Rotations follow IEC 61217: gantry is a right-handed rotation about
``Y_f`` (gantry 0: source above the patient, beam travelling anterior to posterior; gantry 90:
source on the patient's left), collimator a right-handed rotation about the beam axis ``Z_b``
(pointing to the source), couch a right-handed rotation of the patient support about ``Z_f`` (seen
in the patient frame it turns the beam by the opposite angle). BEV coordinates ``(X, Y)`` are the
beam-limiting-device axes ``X_b`` (leaf motion) and ``Y_b`` (across leaf pairs), in mm at the
isocenter plane.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from rtgrid.engines.dose.machine import MachineModel
from rtgrid.engines.errors import EngineError
from rtgrid.engines.imaging.volume import Volume

SUPPORTED_PATIENT_POSITIONS = ("HFS",)


class PatientPositionError(EngineError, ValueError):
    """The beam's patient position is not one the geometry supports (only HFS)."""


class BixelGridError(EngineError, ValueError):
    """A bixel grid cannot be made (empty target, field beyond the machine's limits, bad sizes)."""


@dataclass(frozen=True)
class Beam:
    """One static beam direction. Angles in degrees (IEC 61217), isocenter in LPS mm."""

    gantry_deg: float
    couch_deg: float
    collimator_deg: float
    isocenter_mm: np.ndarray
    patient_position: str = "HFS"

    def __post_init__(self) -> None:
        object.__setattr__(self, "isocenter_mm", np.asarray(self.isocenter_mm, dtype=np.float64).reshape(3))


@dataclass(frozen=True)
class BeamAxes:
    """A beam's frame in LPS: source position (mm) and unit vectors ``x_bev``, ``y_bev`` (BEV axes)
    and ``beam_dir`` (from the source towards the isocenter)."""

    source_mm: np.ndarray
    x_bev: np.ndarray
    y_bev: np.ndarray
    beam_dir: np.ndarray


@dataclass(frozen=True)
class BixelGrid:
    """The beamlets of one beam on a regular lattice at the isocenter plane.

    Bixel ``n`` is centred at ``((ix[n] + 0.5) * bixel_mm, (iy[n] + 0.5) * bixel_mm)`` in BEV mm, so
    bixel edges fall on multiples of ``bixel_mm`` (and on 5 mm leaf boundaries). Bixels are ordered
    by ``iy`` then ``ix`` (row-major, ``Y`` outer): this is the column order of the dose matrix.
    """

    beam: Beam
    bixel_mm: float
    sad_mm: float
    ix: np.ndarray
    iy: np.ndarray
    positions_mm: np.ndarray = field(init=False)
    """``(n_bixels, 2)`` BEV centres ``(X, Y)`` in mm at the isocenter plane."""

    def __post_init__(self) -> None:
        ix = np.asarray(self.ix, dtype=np.int64)
        iy = np.asarray(self.iy, dtype=np.int64)
        order = np.lexsort((ix, iy))
        object.__setattr__(self, "ix", ix[order])
        object.__setattr__(self, "iy", iy[order])
        object.__setattr__(self, "positions_mm", (np.stack([ix[order], iy[order]], axis=1) + 0.5) * self.bixel_mm)

    @property
    def n_bixels(self) -> int:
        return int(self.ix.size)


def _rot(axis: int, angle_rad: float) -> np.ndarray:
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    if axis == 1:  # about y
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])  # about z


# columns: LPS components of the IEC fixed axes X_f, Y_f, Z_f for HFS
_IEC_FIXED_TO_LPS_HFS = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


def beam_axes(beam: Beam, sad_mm: float = 1000.0) -> BeamAxes:
    """The beam's source position and BEV axes in LPS.

    Parameters
    ----------
    beam
        Angles (IEC 61217, degrees) and isocenter (LPS mm).
    sad_mm
        Source-axis distance.

    Returns
    -------
    BeamAxes

    Raises
    ------
    PatientPositionError
        ``beam.patient_position`` is not HFS.
    """
    if beam.patient_position not in SUPPORTED_PATIENT_POSITIONS:
        raise PatientPositionError(
            f"patient position {beam.patient_position!r} is not supported: the beam geometry is defined for "
            f"{', '.join(SUPPORTED_PATIENT_POSITIONS)} only"
        )
    # beam-limiting-device frame in IEC fixed coordinates, then the patient (couch) frame
    r_fixed = _rot(1, np.radians(beam.gantry_deg)) @ _rot(2, np.radians(beam.collimator_deg))
    r_patient = _rot(2, -np.radians(beam.couch_deg)) @ r_fixed
    to_lps = _IEC_FIXED_TO_LPS_HFS @ r_patient
    x_b, y_b, z_b = to_lps[:, 0], to_lps[:, 1], to_lps[:, 2]
    return BeamAxes(source_mm=beam.isocenter_mm + sad_mm * z_b, x_bev=x_b, y_bev=y_b, beam_dir=-z_b)


def project_to_iso_plane(points_mm: np.ndarray, axes: BeamAxes, sad_mm: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """BEV coordinates of LPS points: ``(X, Y)`` projected from the source onto the isocenter plane
    (mm) and ``z``, the distance from the source along the beam axis (mm)."""
    rel = np.asarray(points_mm, dtype=np.float64) - axes.source_mm
    z = rel @ axes.beam_dir
    scale = sad_mm / z
    return (rel @ axes.x_bev) * scale, (rel @ axes.y_bev) * scale, z


def default_isocenter(target_mask: np.ndarray, grid: Volume) -> np.ndarray:
    """The target's centroid (LPS mm): the default isocenter.

    Raises
    ------
    BixelGridError
        The target mask is empty or not on ``grid``.
    """
    target_mask = np.asarray(target_mask, dtype=bool)
    if target_mask.shape != grid.shape:
        raise BixelGridError(f"target mask shape {target_mask.shape} does not match the grid {grid.shape}")
    kji = np.argwhere(target_mask)
    if kji.size == 0:
        raise BixelGridError("target mask is empty: no isocenter can be placed")
    return grid.index_to_lps(kji[:, ::-1].mean(axis=0))


def equispaced_gantry_angles(n: int, start_deg: float = 0.0) -> list[float]:
    """``n`` coplanar gantry angles evenly spaced over 360 degrees (9 -> 0, 40, ..., 320)."""
    if n < 1:
        raise BixelGridError(f"number of beams must be >= 1, got {n}")
    return [float((start_deg + 360.0 * i / n) % 360.0) for i in range(n)]


def open_field_bixels(beam: Beam, machine: MachineModel, field_x_mm: float, field_y_mm: float,
                      bixel_mm: float = 5.0) -> BixelGrid:
    """Bixels tiling a rectangular open field centred on the axis.

    Raises
    ------
    BixelGridError
        A side is not an even multiple of ``bixel_mm``, or the field exceeds the machine's maximum.
    """
    nx, ny = field_x_mm / bixel_mm, field_y_mm / bixel_mm
    if abs(nx - round(nx)) > 1e-6 or abs(ny - round(ny)) > 1e-6 or nx < 1 or ny < 1:
        raise BixelGridError(f"field {field_x_mm} x {field_y_mm} mm is not a positive multiple of the bixel size {bixel_mm} mm")
    if round(nx) % 2 or round(ny) % 2:
        raise BixelGridError(f"open field {field_x_mm} x {field_y_mm} mm must span an even number of {bixel_mm} mm bixels per side")
    _check_field(machine, field_x_mm / 2.0, field_y_mm / 2.0)
    ix, iy = np.meshgrid(np.arange(-round(nx) // 2, round(nx) // 2), np.arange(-round(ny) // 2, round(ny) // 2))
    return BixelGrid(beam, bixel_mm, machine.sad_mm, ix.ravel(), iy.ravel())


def _check_field(machine: MachineModel, half_x: float, half_y: float) -> None:
    if 2 * half_x > machine.max_field_mm[0] + 1e-6 or 2 * half_y > machine.max_field_mm[1] + 1e-6:
        raise BixelGridError(
            f"field extent {2 * half_x:.1f} x {2 * half_y:.1f} mm exceeds the maximum field "
            f"{machine.max_field_mm[0]:.0f} x {machine.max_field_mm[1]:.0f} mm of machine {machine.id}"
        )


def make_bixel_grid(beam: Beam, target_mask: np.ndarray, dose_grid: Volume, machine: MachineModel,
                    bixel_mm: float = 5.0, margin_mm: float = 5.0) -> BixelGrid:
    """Bixels covering the target's projection in the beam's eye view plus a margin.

    A bixel is kept when its centre lies within ``margin_mm`` (iso plane) of the projection of a
    target voxel (each voxel counted with its own extent).

    Parameters
    ----------
    beam
        The beam (its isocenter is where the projection plane sits).
    target_mask
        Boolean ``(nz, ny, nx)`` mask on ``dose_grid``.
    dose_grid
        Geometry of the mask.
    machine
        Supplies SAD and the maximum field.
    bixel_mm
        Bixel side at the isocenter plane.
    margin_mm
        Margin around the projected target.

    Returns
    -------
    BixelGrid

    Raises
    ------
    BixelGridError
        Empty target, non-positive sizes, or a field larger than the machine allows.
    PatientPositionError
        Unsupported patient position.
    """
    if bixel_mm <= 0 or margin_mm < 0:
        raise BixelGridError(f"bixel_mm must be > 0 and margin_mm >= 0, got {bixel_mm}, {margin_mm}")
    target_mask = np.asarray(target_mask, dtype=bool)
    if target_mask.shape != dose_grid.shape:
        raise BixelGridError(f"target mask shape {target_mask.shape} does not match the dose grid {dose_grid.shape}")
    kji = np.argwhere(target_mask)
    if kji.size == 0:
        raise BixelGridError("target mask is empty: no bixels can be placed")
    axes = beam_axes(beam, machine.sad_mm)
    x, y, z = project_to_iso_plane(dose_grid.index_to_lps(kji[:, ::-1].astype(np.float64)), axes, machine.sad_mm)
    # rasterise the projection at 1 mm, grow it by the voxel half-extent plus the margin
    res = 1.0
    reach = 0.5 * float(np.max(dose_grid.spacing_mm)) * machine.sad_mm / float(z.min()) + margin_mm
    pad = reach + bixel_mm
    x0, y0 = x.min() - pad, y.min() - pad
    shape = (int(np.ceil((y.max() + pad - y0) / res)) + 1, int(np.ceil((x.max() + pad - x0) / res)) + 1)
    raster = np.zeros(shape, dtype=bool)
    raster[np.round((y - y0) / res).astype(np.int64), np.round((x - x0) / res).astype(np.int64)] = True
    r = int(np.ceil(reach / res))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    raster = ndimage.binary_dilation(raster, structure=(xx**2 + yy**2) <= (reach / res) ** 2)
    ix_range = np.arange(int(np.floor((x.min() - pad) / bixel_mm)), int(np.ceil((x.max() + pad) / bixel_mm)) + 1)
    iy_range = np.arange(int(np.floor((y.min() - pad) / bixel_mm)), int(np.ceil((y.max() + pad) / bixel_mm)) + 1)
    gx, gy = np.meshgrid(ix_range, iy_range)
    cx, cy = (gx + 0.5) * bixel_mm, (gy + 0.5) * bixel_mm
    ri = np.round((cy - y0) / res).astype(np.int64)
    ci = np.round((cx - x0) / res).astype(np.int64)
    inside = (ri >= 0) & (ri < shape[0]) & (ci >= 0) & (ci < shape[1])
    keep = np.zeros_like(inside)
    keep[inside] = raster[ri[inside], ci[inside]]
    ix, iy = gx[keep], gy[keep]
    half_x = max(abs(ix.min()), abs(ix.max() + 1)) * bixel_mm
    half_y = max(abs(iy.min()), abs(iy.max() + 1)) * bixel_mm
    _check_field(machine, half_x, half_y)
    return BixelGrid(beam, bixel_mm, machine.sad_mm, ix, iy)
