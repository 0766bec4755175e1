"""Dose of step-and-shoot segments, from the apertures themselves (never from an ideal fluence).

Each segment's aperture is rasterised on a square lattice at the isocenter plane (cells no larger
than the narrowest leaf, rows aligned with leaf-pair edges): a cell's fluence is the segment's MU
times the cell's open fraction under the leaves and jaws, summed over the segments. The full
pencil-beam kernel of the device (:func:`rtgrid.engines.dose.pencil_beam.compute_beam_dose`)
turns that fluence into dose. Leaf transmission and tongue-and-groove are not modelled.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from functools import reduce
from math import gcd

import numpy as np
import scipy.sparse as sp

from rtgrid.engines.dose.beams import Beam, BixelGrid
from rtgrid.engines.dose.pencil_beam import compute_beam_dose
from rtgrid.engines.errors import EngineError
from rtgrid.engines.imaging.volume import Volume

from .device import DeviceModel
from .leaf_grid import LeafGrid
from .segment import Segment, open_fraction

DEFAULT_RESOLUTION_MM = 2.5


class SegmentDoseError(EngineError, ValueError):
    """A lattice that does not align with the leaves, or segments that do not fit the device."""


def _check_resolution(device: DeviceModel, resolution_mm: float) -> None:
    steps = [int(round(w * 100)) for w in device.machine.leaf_widths_mm]
    step = int(round(resolution_mm * 100))
    if step <= 0 or reduce(gcd, steps) % step:
        raise SegmentDoseError(
            f"dose lattice {resolution_mm} mm does not divide every leaf width of {device.id} "
            f"(their common divisor is {float(Fraction(reduce(gcd, steps), 100)):g} mm)"
        )


def segments_fluence(segments: Sequence[Segment], device: DeviceModel, beam: Beam,
                     resolution_mm: float = DEFAULT_RESOLUTION_MM) -> tuple[BixelGrid, np.ndarray]:
    """The fluence (MU-equivalent per cell) the segments deliver, on a square lattice.

    Returns
    -------
    cells, weights
        A :class:`BixelGrid` of side ``resolution_mm`` covering every segment's jaw opening, and the
        fluence of each of its cells.

    Raises
    ------
    SegmentDoseError
        ``resolution_mm`` does not divide every leaf width, or there are no segments.
    """
    if not segments:
        raise SegmentDoseError("no segments: a beam without segments delivers no dose")
    _check_resolution(device, resolution_mm)
    r = resolution_mm
    ix0 = int(np.floor(min(s.jaw_x_mm[0] for s in segments) / r + 1e-9))
    ix1 = int(np.ceil(max(s.jaw_x_mm[1] for s in segments) / r - 1e-9))
    iy0 = int(np.floor(min(s.jaw_y_mm[0] for s in segments) / r + 1e-9))
    iy1 = int(np.ceil(max(s.jaw_y_mm[1] for s in segments) / r - 1e-9))
    rows, cols = np.arange(iy0, iy1 + 1) * r, np.arange(ix0, ix1 + 1) * r
    fluence = np.zeros((rows.size - 1, cols.size - 1))
    for seg in segments:
        fluence += seg.mu * open_fraction(seg, device.leaf_boundaries_mm, rows, cols)
    iy, ix = np.nonzero(fluence > 0)
    cells = BixelGrid(beam, r, device.machine.sad_mm, ix + ix0, iy + iy0)
    # BixelGrid keeps its cells ordered by (iy, ix), which np.nonzero already returns
    return cells, fluence[iy, ix]


def segments_dose(density: Volume, dose_mask: np.ndarray, beam: Beam, segments: Sequence[Segment], device: DeviceModel,
                  *, resolution_mm: float = DEFAULT_RESOLUTION_MM, compute_device: str = "cpu") -> np.ndarray:
    """Dose of one beam's segments (one fraction), from their apertures, with the full kernel.

    Parameters
    ----------
    density
        Relative electron density on the dose grid.
    dose_mask
        Voxels where dose is computed.
    beam
    segments
        MU per fraction.
    device
    resolution_mm
        Aperture lattice; must divide every leaf width.
    compute_device
        ``"cpu"`` or ``"gpu"``.

    Returns
    -------
    np.ndarray
        ``float32`` Gy per fraction, ``density.shape``.
    """
    cells, weights = segments_fluence(segments, device, beam, resolution_mm)
    return compute_beam_dose(density, dose_mask, beam, cells, device.machine, weights, device=compute_device)


def segment_open_fractions(segments: Sequence[Segment], grid: LeafGrid, device: DeviceModel) -> sp.csc_matrix:
    """``(grid.n_bixels, n_segments)`` open fraction of each device bixel under each segment:
    ``dij @ F`` is the dose per MU of every segment (for the MU refinement)."""
    columns = [open_fraction(seg, device.leaf_boundaries_mm, grid.row_edges_mm, grid.column_edges_mm)[grid.rows, grid.cols]
               for seg in segments]
    return sp.csc_matrix(np.stack(columns, axis=1)) if columns else sp.csc_matrix((grid.n_bixels, 0))
