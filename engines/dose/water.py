"""Open fields in a virtual water phantom, computed with the full dose engine: depth doses,
profiles, output factors and penumbrae (commissioning checks and the device coincidence check).

The phantom is a water slab with its surface at the requested SSD, gantry 0 (the beam runs along
LPS +y), isocenter at the origin. Dose points sit on 1 mm voxel centres: the central axis at
depths ``0.5, 1.5, ...`` mm and lateral rows across ``x`` at the requested depth.
"""

from __future__ import annotations

import numpy as np

from rtgrid.engines.dose.beams import Beam, open_field_bixels
from rtgrid.engines.dose.machine import MachineModel
from rtgrid.engines.dose.pencil_beam import compute_beam_dij
from rtgrid.engines.imaging.volume import Volume

VOXEL_MM = 1.0
SLAB_HALF_THICKNESS_MM = 15.0


def water_phantom(ssd_mm: float, sad_mm: float, depth_mm: float, half_width_mm: float) -> Volume:
    """Water (relative electron density 1) from the surface to ``depth_mm``, ``|x| <= half_width_mm``,
    a thin slab in ``z`` (a pencil beam only reads density along the ray to each point)."""
    nx = 2 * int(np.ceil(half_width_mm / VOXEL_MM)) + 1
    ny = int(np.ceil(depth_mm / VOXEL_MM))
    nz = 2 * int(SLAB_HALF_THICKNESS_MM / 5.0) + 1
    surface_y = ssd_mm - sad_mm  # isocenter at the origin, source at y = -SAD
    origin = (-(nx // 2) * VOXEL_MM, surface_y + 0.5 * VOXEL_MM, -(nz // 2) * 5.0)
    return Volume(np.ones((nz, ny, nx), dtype=np.float32), origin, (VOXEL_MM, VOXEL_MM, 5.0))


def _open_field_dose(machine: MachineModel, field_mm: float, ssd_mm: float, phantom: Volume,
                     mask: np.ndarray, bixel_mm: float, lateral_cutoff_mm: float) -> np.ndarray:
    beam = Beam(0.0, 0.0, 0.0, np.zeros(3))
    bixels = open_field_bixels(beam, machine, field_mm, field_mm, bixel_mm)
    dij = compute_beam_dij(phantom, mask, beam, bixels, machine, lateral_cutoff_mm=lateral_cutoff_mm)
    return (dij @ np.ones(bixels.n_bixels, dtype=np.float32)).reshape(phantom.shape)


def depth_dose(machine: MachineModel, field_mm: float, ssd_mm: float = 1000.0, max_depth_mm: float = 300.0, *,
               bixel_mm: float = 5.0, lateral_cutoff_mm: float = float("inf")) -> tuple[np.ndarray, np.ndarray]:
    """Central-axis dose of a square open field (side at the isocenter plane).

    Returns
    -------
    depths_mm, dose_gy_per_mu
        Depths of the 1 mm voxel centres and the dose there per unit bixel weight (MU-equivalent).
    """
    phantom = water_phantom(ssd_mm, machine.sad_mm, max_depth_mm, 2.0)
    mask = np.zeros(phantom.shape, dtype=bool)
    mask[phantom.shape[0] // 2, :, phantom.shape[2] // 2] = True
    dose = _open_field_dose(machine, field_mm, ssd_mm, phantom, mask, bixel_mm, lateral_cutoff_mm)
    depths = (np.arange(phantom.shape[1]) + 0.5) * VOXEL_MM
    return depths, dose[phantom.shape[0] // 2, :, phantom.shape[2] // 2]


def profile(machine: MachineModel, field_mm: float, depth_mm: float, ssd_mm: float = 1000.0, *,
            bixel_mm: float = 5.0, lateral_cutoff_mm: float = float("inf")) -> tuple[np.ndarray, np.ndarray]:
    """Cross-line (x) profile of a square open field at ``depth_mm``.

    Returns
    -------
    positions_mm, dose_gy_per_mu
        Physical lateral positions at that depth (1 mm apart, 0 on the axis) and the dose.
    """
    half = field_mm * (ssd_mm + depth_mm) / machine.sad_mm / 2.0 + 40.0
    phantom = water_phantom(ssd_mm, machine.sad_mm, depth_mm + 3.0, half)
    row = depth_mm / VOXEL_MM - 0.5
    lo = int(np.floor(row))
    frac = row - lo
    mask = np.zeros(phantom.shape, dtype=bool)
    mask[phantom.shape[0] // 2, lo:lo + 2, :] = True
    dose = _open_field_dose(machine, field_mm, ssd_mm, phantom, mask, bixel_mm, lateral_cutoff_mm)
    rows = dose[phantom.shape[0] // 2]
    positions = (np.arange(phantom.shape[2]) - phantom.shape[2] // 2) * VOXEL_MM
    return positions, (1.0 - frac) * rows[lo] + frac * rows[lo + 1]


def axis_dose(machine: MachineModel, field_mm: float, depth_mm: float, ssd_mm: float, **kwargs) -> float:
    """Dose (Gy per MU-equivalent) on the axis of a square open field at one depth."""
    depths, dose = depth_dose(machine, field_mm, ssd_mm, depth_mm + 3.0, **kwargs)
    return float(np.interp(depth_mm, depths, dose))


def output_factor(machine: MachineModel, field_mm: float, depth_mm: float, ssd_mm: float,
                  reference_field_mm: float = 100.0, **kwargs) -> float:
    """Dose per MU of a square field relative to the reference field, same depth and SSD."""
    return axis_dose(machine, field_mm, depth_mm, ssd_mm, **kwargs) / axis_dose(machine, reference_field_mm, depth_mm, ssd_mm, **kwargs)


def depth_of_maximum_mm(depths_mm: np.ndarray, dose: np.ndarray) -> float:
    """Depth of maximum dose, refined by a parabola through the highest sample and its neighbours."""
    n = int(np.argmax(dose))
    if 0 < n < len(dose) - 1:
        y0, y1, y2 = dose[n - 1], dose[n], dose[n + 1]
        shift = 0.5 * (y0 - y2) / (y0 - 2 * y1 + y2)
        return float(depths_mm[n] + shift * (depths_mm[n + 1] - depths_mm[n]))
    return float(depths_mm[n])


def penumbra_80_20_mm(positions_mm: np.ndarray, dose: np.ndarray) -> float:
    """Width (mm) between the 80 % and 20 % levels of the right-hand field edge of a profile
    normalised to its value at position 0 (positions increasing)."""
    positions_mm = np.asarray(positions_mm, dtype=np.float64)
    dose = np.asarray(dose, dtype=np.float64)
    centre = float(np.interp(0.0, positions_mm, dose))
    right = positions_mm >= 0
    x, y = positions_mm[right], dose[right] / centre
    edge = np.argmax(y < 0.5)  # first sample past the edge; the fall-off around it is monotonic
    lo = max(edge - 40, 0)
    xs, ys = x[lo:edge + 40][::-1], y[lo:edge + 40][::-1]
    return float(np.interp(0.2, ys, xs) - np.interp(0.8, ys, xs))
