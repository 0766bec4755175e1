"""A digital thorax phantom: a CT of a supine patient on a couch, with exact ground-truth labels.

The anatomy is built from analytic shapes in LPS millimetres (x to patient left, y posterior,
z superior; head-first supine, so ``direction`` is the identity and image rows run anterior to
posterior). Sizes follow the field of view so small test grids still hold every structure.
Every label is a boolean mask on the CT grid; the CT is HU with seeded Gaussian noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from rtgrid.engines.imaging.ct_writer import write_ct_series
from rtgrid.engines.imaging.volume import Volume

DEFAULT_SHAPE = (64, 256, 256)
"""(nz, ny, nx) of the demo patient."""
DEFAULT_SPACING_MM = (1.5, 1.5, 3.0)
"""(di, dj, dk): column, row and slice spacing of the demo patient."""
PTV_MARGIN_MM = 5.0
NOISE_SIGMA_HU = 10.0
LABEL_NAMES = ("BODY", "Lung_L", "Lung_R", "Heart", "SpinalCord", "Bones", "AirCavity", "GTV", "PTV", "Couch")
"""Ground-truth structures. ``Lung_L``/``Lung_R`` exclude the GTV; ``Couch`` is not patient."""

# Nominal HU of each tissue before noise.
HU_AIR = -1000
HU_LUNG = -820
HU_FAT = -100
HU_SOFT_TISSUE = 40
HU_MUSCLE = 50
HU_BLOOD = 45
HU_CORD = 35
HU_TUMOUR = 35
HU_DISC = 80
HU_CANCELLOUS_BONE = 450
HU_CORTICAL_BONE = 900
HU_RIB = 700
HU_STERNUM = 650
HU_COUCH_SHELL = 200
HU_COUCH_CORE = -300

# Adult thorax dimensions in mm at full size (scaled down for small fields of view).
_TORSO_SEMI_AXES_MM = (170.0, 115.0)
_SKIN_MM = 2.0
_FAT_MM = 15.0
_MUSCLE_MM = 10.0
_RIB_DEPTH_MM = 9.0
_RIB_PERIOD_MM = 25.0
_RIB_WIDTH_MM = 10.0
_DISC_PERIOD_MM = 25.0
_DISC_WIDTH_MM = 5.0
_GTV_RADIUS_MM = 15.0


@dataclass(frozen=True)
class Phantom:
    """A synthetic CT with exact ground truth.

    Attributes
    ----------
    ct : Volume
        ``int16`` HU, LPS, identity direction, body centred near x = y = 0.
    labels : dict of str to np.ndarray
        Boolean masks on the CT grid, keyed by the names in ``LABEL_NAMES``.
    """

    ct: Volume
    labels: dict[str, np.ndarray]


@dataclass(frozen=True)
class PhantomCase:
    """Where ``write_phantom_case`` put a phantom patient."""

    ct_dir: Path
    ct_files: tuple[Path, ...]
    ground_truth_path: Path
    patient_id: str


def make_phantom(
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    spacing_mm: tuple[float, float, float] = DEFAULT_SPACING_MM,
    seed: int = 0,
) -> Phantom:
    """Build the thorax phantom on a ``shape`` grid.

    Parameters
    ----------
    shape : (nz, ny, nx)
        Grid size; at least 4 slices and 32 x 32 pixels.
    spacing_mm : (di, dj, dk)
        Column, row and slice spacing in mm.
    seed : int
        Seed of the CT noise; the anatomy does not depend on it.

    Returns
    -------
    Phantom

    Raises
    ------
    ValueError
        The grid is too small to hold the anatomy or a spacing is not positive.
    """
    nz, ny, nx = (int(n) for n in shape)
    di, dj, dk = (float(s) for s in spacing_mm)
    if nz < 4 or ny < 32 or nx < 32:
        raise ValueError(f"phantom grid {shape} is too small: needs nz >= 4, ny >= 32, nx >= 32")
    if min(di, dj, dk) <= 0:
        raise ValueError(f"spacing_mm must be positive, got {spacing_mm}")
    origin = np.array([-(nx - 1) / 2 * di, -(ny - 1) / 2 * dj, -(nz - 1) / 2 * dk])
    x = origin[0] + di * np.arange(nx)
    y = origin[1] + dj * np.arange(ny)
    z = origin[2] + dk * np.arange(nz)
    X, Y = x[None, :], y[:, None]
    z_frac = (z - z[0]) / max(z[-1] - z[0], dk)  # 0 at the inferior slice, 1 at the superior one

    a = min(_TORSO_SEMI_AXES_MM[0], 0.40 * nx * di)
    b = min(_TORSO_SEMI_AXES_MM[1], 0.28 * ny * dj)
    scale = min(a / _TORSO_SEMI_AXES_MM[0], b / _TORSO_SEMI_AXES_MM[1])
    voxel_mm = max(di, dj)

    # Depth below the skin, approximated on the ellipse by (1 - rho) times the local radius.
    rho = np.sqrt((X / a) ** 2 + (Y / b) ** 2)
    radius = np.hypot(X, Y)
    boundary = np.where(rho > 1e-9, radius / np.maximum(rho, 1e-9), min(a, b))  # centre-to-skin along the ray
    depth = (1.0 - rho) * boundary
    body2d = rho <= 1.0
    skin_mm = max(_SKIN_MM, 1.01 * voxel_mm)
    fat_end = skin_mm + _FAT_MM * scale
    muscle_end = fat_end + _MUSCLE_MM * scale
    rib_end = muscle_end + max(_RIB_DEPTH_MM * scale, 1.5 * voxel_mm)
    cavity2d = body2d & (depth >= rib_end)
    rib_ring2d = body2d & (depth >= muscle_end) & (depth < rib_end)
    sternum2d = rib_ring2d & (np.abs(X) < min(18.0, 0.10 * a)) & (Y < 0)

    # Spine: vertebral body, canal with cord, posterior arch.
    vb_center, vb_radius = 0.45 * b, 0.16 * b
    vb2d = X**2 + (Y - vb_center) ** 2 <= vb_radius**2
    vb_cortex2d = vb2d & (X**2 + (Y - vb_center) ** 2 > (vb_radius - max(2.5 * scale, voxel_mm)) ** 2)
    cord_radius = max(5.0 * scale, 1.5 * voxel_mm)
    canal_radius = cord_radius + max(2.0 * scale, voxel_mm)
    canal_center = vb_center + vb_radius + canal_radius + max(1.0 * scale, 0.5 * voxel_mm)
    canal_r2 = X**2 + (Y - canal_center) ** 2
    cord2d = canal_r2 <= cord_radius**2
    arch_outer = canal_radius + max(6.0 * scale, 1.5 * voxel_mm)
    arch2d = body2d & (canal_r2 > canal_radius**2) & (canal_r2 <= arch_outer**2)
    arch2d &= Y > canal_center - canal_radius  # the arch closes the canal posteriorly and laterally
    # Ribs leave a gap beside the sternum (costal cartilage) and end at the spine's transverse processes.
    cartilage_gap2d = (np.abs(X) < 0.22 * a) & (Y < 0)
    spine_gap2d = (np.abs(X) < arch_outer + 5.0 * scale) & (Y > 0)
    ribs2d = rib_ring2d & ~cartilage_gap2d & ~spine_gap2d

    trachea_radius = max(9.0 * scale, 1.5 * voxel_mm)
    trachea2d = X**2 + (Y - 0.12 * b) ** 2 <= trachea_radius**2

    # Couch: a shell-foam-shell plate a few mm posterior of the skin, wider than the patient.
    couch_gap = max(4.0, 1.5 * dj)
    couch_top = b + couch_gap
    couch_thickness = min(40.0, max(4 * dj, 0.08 * ny * dj))
    shell = max(3.0, dj)
    couch_width = 0.9 * nx * di / 2
    in_couch = (np.abs(X) <= couch_width) & (Y >= couch_top) & (Y <= couch_top + couch_thickness)
    couch_shell2d = in_couch & ((Y < couch_top + shell) | (Y > couch_top + couch_thickness - shell))
    couch2d = in_couch

    # Lungs: elliptic cylinders in the chest cavity, domed at the diaphragm, tapered at the apex.
    lung_semi = (0.30 * a, 0.62 * b)
    mediastinum_half_width = 0.07 * a
    spine_keepout2d = X**2 + (Y - vb_center) ** 2 <= (vb_radius + 4.0 * scale) ** 2
    apex_start, apex_end = 0.80, 0.98
    taper = np.sqrt(np.clip(1.0 - ((z_frac - apex_start) / (apex_end - apex_start)) ** 2, 0.0, 1.0))
    taper[z_frac < apex_start] = 1.0
    taper[z_frac > apex_end] = 0.0

    # Heart: an ellipsoid to the patient's left in the lower half of the chest.
    heart_center = (0.10 * a, -0.22 * b, z[0] + 0.35 * (z[-1] - z[0]))
    heart_semi = (0.28 * a, 0.30 * b, max(min(60.0, 0.25 * (z[-1] - z[0])), 1.5 * dk))
    heart_q2d = ((X - heart_center[0]) / heart_semi[0]) ** 2 + ((Y - heart_center[1]) / heart_semi[1]) ** 2
    heart_tz = 1.0 - ((z - heart_center[2]) / heart_semi[2]) ** 2
    heart = (heart_q2d[None] <= heart_tz[:, None, None]) & cavity2d[None]
    pericardium_mm = 3.0
    heart_keepout_q2d = ((X - heart_center[0]) / (heart_semi[0] + pericardium_mm)) ** 2 + (
        (Y - heart_center[1]) / (heart_semi[1] + pericardium_mm)
    ) ** 2
    heart_keepout_tz = 1.0 - ((z - heart_center[2]) / (heart_semi[2] + pericardium_mm)) ** 2
    heart_keepout = heart_keepout_q2d[None] <= heart_keepout_tz[:, None, None]

    lungs = {}
    for name, side in (("Lung_R", -1.0), ("Lung_L", 1.0)):
        cx, cy = side * 0.43 * a, -0.05 * b
        q2d = ((X - cx) / lung_semi[0]) ** 2 + ((Y - cy) / lung_semi[1]) ** 2
        floor2d = 0.06 + 0.14 * (1.0 - np.clip(q2d, 0.0, 1.0))  # diaphragm dome, as a fraction of the length
        allowed2d = cavity2d & (side * X > mediastinum_half_width) & ~spine_keepout2d
        lung = (q2d[None] <= (taper**2)[:, None, None]) & (z_frac[:, None, None] >= floor2d[None]) & allowed2d[None]
        lungs[name] = lung & ~heart_keepout

    # Tumour in the right lung (patient right = -x), well inside the lung.
    gtv_radius = min(_GTV_RADIUS_MM, 0.25 * lung_semi[0])
    gtv_center = np.array([-0.43 * a, -0.05 * b, z[0] + 0.55 * (z[-1] - z[0])])
    gtv, gtv_grown = _ball_with_margin((z, y, x), (dk, dj, di), gtv_center, gtv_radius, PTV_MARGIN_MM)

    # z-dependent bone: ribs in bands, vertebral bodies separated by discs.
    rib_z = np.mod(z - z[0], _RIB_PERIOD_MM) < _RIB_WIDTH_MM
    disc_z = np.mod(z - z[0], _DISC_PERIOD_MM) < _DISC_WIDTH_MM
    ribs = ribs2d[None] & rib_z[:, None, None]
    vertebral_body = vb2d[None] & ~disc_z[:, None, None]
    trachea = trachea2d[None] & (z_frac >= 0.62)[:, None, None]

    body = np.broadcast_to(body2d, (nz, ny, nx)).copy()
    bones = ribs | vertebral_body
    bones |= (sternum2d | arch2d)[None]
    cord = np.broadcast_to(cord2d, (nz, ny, nx)).copy()
    lung_r = lungs["Lung_R"] & ~gtv
    lung_l = lungs["Lung_L"]
    ptv = gtv_grown & body

    # Paint the CT from the outside in; later structures take precedence.
    base = np.full((ny, nx), HU_AIR, dtype=np.int16)
    base[couch2d] = HU_COUCH_CORE
    base[couch_shell2d] = HU_COUCH_SHELL
    base[body2d] = HU_SOFT_TISSUE  # skin
    base[body2d & (depth >= skin_mm)] = HU_FAT
    base[body2d & (depth >= fat_end)] = HU_MUSCLE
    base[cavity2d] = HU_SOFT_TISSUE
    base[sternum2d] = HU_STERNUM
    base[vb2d] = HU_DISC
    base[arch2d] = HU_CORTICAL_BONE
    base[body2d & (canal_r2 <= canal_radius**2)] = HU_SOFT_TISSUE
    base[cord2d] = HU_CORD
    ct = np.broadcast_to(base, (nz, ny, nx)).copy()
    ct[ribs] = HU_RIB
    ct[vertebral_body] = HU_CANCELLOUS_BONE
    ct[vertebral_body & vb_cortex2d[None]] = HU_CORTICAL_BONE
    ct[lung_r | lung_l] = HU_LUNG
    ct[heart] = HU_BLOOD
    ct[trachea] = HU_AIR
    ct[gtv] = HU_TUMOUR
    _add_noise(ct, np.random.default_rng(seed), NOISE_SIGMA_HU)

    labels = {
        "BODY": body,
        "Lung_L": lung_l,
        "Lung_R": lung_r,
        "Heart": heart,
        "SpinalCord": cord,
        "Bones": bones,
        "AirCavity": trachea,
        "GTV": gtv,
        "PTV": ptv,
        "Couch": np.broadcast_to(couch2d, (nz, ny, nx)).copy(),
    }
    return Phantom(ct=Volume(ct, origin_mm=origin, spacing_mm=(di, dj, dk)), labels=labels)


def write_phantom_case(
    out_dir: Path,
    *,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    spacing_mm: tuple[float, float, float] = DEFAULT_SPACING_MM,
    seed: int = 0,
) -> PhantomCase:
    """Write a phantom patient: its CT series and its ground-truth labels.

    Parameters
    ----------
    out_dir : Path
        Receives ``ct/CT_0000.dcm ...`` and ``ground_truth.npz``.
    shape, spacing_mm, seed
        As for :func:`make_phantom`.

    Returns
    -------
    PhantomCase

    Raises
    ------
    ValueError
        As for :func:`make_phantom`.
    """
    phantom = make_phantom(shape, spacing_mm, seed)
    out_dir = Path(out_dir)
    patient_id = f"RTGRID-PHANTOM-{seed}"
    ct_files = write_ct_series(
        phantom.ct,
        out_dir / "ct",
        patient_id=patient_id,
        patient_name="Phantom^Thorax",
        study_description="rtgrid digital thorax phantom",
        series_description=f"Phantom CT seed {seed}",
    )
    ground_truth_path = out_dir / "ground_truth.npz"
    np.savez_compressed(
        ground_truth_path,
        label_names=np.array(list(phantom.labels)),
        origin_mm=phantom.ct.origin_mm,
        spacing_mm=phantom.ct.spacing_mm,
        direction=phantom.ct.direction,
        **phantom.labels,
    )
    return PhantomCase(
        ct_dir=out_dir / "ct", ct_files=tuple(ct_files), ground_truth_path=ground_truth_path, patient_id=patient_id
    )


def read_ground_truth(path: Path) -> dict[str, Volume]:
    """Read ``ground_truth.npz`` written by :func:`write_phantom_case`.

    Parameters
    ----------
    path : Path
        The ``.npz`` file.

    Returns
    -------
    dict of str to Volume
        One boolean ``Volume`` per label, on the CT grid.
    """
    with np.load(path) as archive:
        origin, spacing, direction = archive["origin_mm"], archive["spacing_mm"], archive["direction"]
        return {str(name): Volume(archive[str(name)], origin, spacing, direction) for name in archive["label_names"]}


def _ball_with_margin(
    axes_mm: tuple[np.ndarray, np.ndarray, np.ndarray],
    spacing_kji_mm: tuple[float, float, float],
    center_mm: np.ndarray,
    radius_mm: float,
    margin_mm: float,
) -> tuple[np.ndarray, np.ndarray]:
    """A voxelised ball and the voxels within ``margin_mm`` (Euclidean) of it.

    ``axes_mm`` are the (z, y, x) voxel-centre coordinates. Both masks are computed on the ball's
    bounding box grown by the margin, so large grids stay cheap.
    """
    center_kji = center_mm[::-1]
    reach = radius_mm + margin_mm
    box = tuple(
        slice(int(np.searchsorted(a, c - reach - s)), int(np.searchsorted(a, c + reach + s, side="right")))
        for a, c, s in zip(axes_mm, center_kji, spacing_kji_mm, strict=True)
    )
    zz, yy, xx = (a[b] for a, b in zip(axes_mm, box, strict=True))
    r2 = (
        (zz[:, None, None] - center_kji[0]) ** 2
        + (yy[None, :, None] - center_kji[1]) ** 2
        + (xx[None, None, :] - center_kji[2]) ** 2
    )
    shape = tuple(len(a) for a in axes_mm)
    ball, grown = np.zeros(shape, dtype=bool), np.zeros(shape, dtype=bool)
    ball[box] = r2 <= radius_mm**2
    if ball[box].any():
        grown[box] = ndimage.distance_transform_edt(~ball[box], sampling=spacing_kji_mm) <= margin_mm
    return ball, grown


def _add_noise(ct: np.ndarray, rng: np.random.Generator, sigma_hu: float, slab: int = 16) -> None:
    """Add seeded Gaussian noise in slabs, so memory stays bounded on large grids."""
    for start in range(0, ct.shape[0], slab):
        part = ct[start : start + slab]
        noise = rng.standard_normal(part.shape, dtype=np.float32)
        noise *= sigma_hu
        noise += part
        np.rint(noise, out=noise)
        part[...] = noise.astype(np.int16)
