"""Preparing CT slices for a 2-D network: axial orientation, HU window, in-plane resampling.

Axial slices are presented to the network in the standard DICOM display orientation: columns
run towards patient left (+x in LPS) and rows towards posterior (+y). Volumes in another
axis-aligned orientation (e.g. NIfTI read through ITK) are flipped into it; oblique ones are
refused, because a 2-D axial model would silently see a sheared patient.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from rtgrid.engines.errors import EngineError
from rtgrid.engines.imaging.volume import Volume


class OrientationError(EngineError, ValueError):
    """The volume is not an axial stack aligned with the patient axes."""


def axial_flips(volume: Volume) -> tuple[bool, bool]:
    """Which in-plane axes to flip to reach the standard axial orientation.

    Returns
    -------
    (flip_rows, flip_columns) : tuple[bool, bool]
        ``flip_rows`` flips array axis 1 (``j``), ``flip_columns`` array axis 2 (``i``).

    Raises
    ------
    OrientationError
        When the ``i`` axis is not along ±x, ``j`` along ±y, or ``k`` along ±z (within 1e-3).
    """
    direction = volume.direction
    expected = np.abs(np.diag(direction))
    if not np.allclose(expected, 1.0, atol=1e-3):
        raise OrientationError(
            f"volume direction {np.round(direction, 4).tolist()} is not an axial stack aligned with "
            "the patient axes (i along ±x, j along ±y, k along ±z); resample it first"
        )
    return bool(direction[1, 1] < 0), bool(direction[0, 0] < 0)


def to_standard_axial(volume: Volume) -> Volume:
    """The same image with rows and columns in the standard axial orientation (slice order kept)."""
    flip_rows, flip_columns = axial_flips(volume)
    voxels = volume.voxels
    origin = volume.origin_mm.copy()
    direction = volume.direction.copy()
    nz, ny, nx = volume.shape
    if flip_rows:
        origin = origin + direction[:, 1] * volume.spacing_mm[1] * (ny - 1)
        direction[:, 1] *= -1
        voxels = voxels[:, ::-1, :]
    if flip_columns:
        origin = origin + direction[:, 0] * volume.spacing_mm[0] * (nx - 1)
        direction[:, 0] *= -1
        voxels = voxels[:, :, ::-1]
    return Volume(np.ascontiguousarray(voxels), origin, volume.spacing_mm, direction)


def window_hu(hu: torch.Tensor, hu_window: Sequence[float]) -> torch.Tensor:
    """Map HU linearly so that ``hu_window`` becomes [0, 1], clipping outside it."""
    low, high = float(hu_window[0]), float(hu_window[1])
    return ((hu.float() - low) / (high - low)).clamp_(0.0, 1.0)


def model_grid_shape(shape_yx: tuple[int, int], spacing_mm: Sequence[float], model_spacing_mm: Sequence[float]) -> tuple[int, int]:
    """In-plane ``(ny, nx)`` of the model grid covering the same field of view.

    ``spacing_mm`` and ``model_spacing_mm`` are ``(column, row)`` spacings in mm.
    """
    ny, nx = shape_yx
    return (
        max(1, int(round(ny * float(spacing_mm[1]) / float(model_spacing_mm[1])))),
        max(1, int(round(nx * float(spacing_mm[0]) / float(model_spacing_mm[0])))),
    )


def resample_images(images: torch.Tensor, size_yx: tuple[int, int]) -> torch.Tensor:
    """Bilinear in-plane resampling of ``(batch, channels, ny, nx)`` preserving the field of view.

    ``align_corners=False`` treats pixels as areas, so the mapping back to the original grid is
    the exact inverse transform (no half-pixel shift).
    """
    if tuple(images.shape[-2:]) == tuple(size_yx):
        return images
    return F.interpolate(images, size=size_yx, mode="bilinear", align_corners=False, antialias=False)


def resample_labels(labels: torch.Tensor, size_yx: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour in-plane resampling of integer label maps ``(batch, ny, nx)``."""
    if tuple(labels.shape[-2:]) == tuple(size_yx):
        return labels
    resampled = F.interpolate(labels[:, None].float(), size=size_yx, mode="nearest-exact")
    return resampled[:, 0].to(labels.dtype)
