"""Contours drawn on CT slices as one PNG: what a person checks first after auto-contouring."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from scipy import ndimage

from rtgrid.engines.imaging.volume import Volume

# Soft-tissue window (HU) for the background.
WINDOW_CENTER_HU = 40.0
WINDOW_WIDTH_HU = 400.0


def _window(hu: np.ndarray) -> np.ndarray:
    low = WINDOW_CENTER_HU - WINDOW_WIDTH_HU / 2
    scaled = (hu.astype(np.float32) - low) / WINDOW_WIDTH_HU
    return (np.clip(scaled, 0.0, 1.0) * 255).astype(np.uint8)


def render_overlays(
    ct: Volume,
    masks: dict[str, np.ndarray],
    colors: dict[str, tuple[int, int, int]],
    n_slices: int = 4,
) -> bytes:
    """Render ``n_slices`` axial slices, evenly spread over the structures, with coloured outlines.

    Parameters
    ----------
    ct : Volume
        The CT in HU.
    masks : dict[str, np.ndarray]
        Boolean masks on the CT grid, by structure name.
    colors : dict[str, tuple[int, int, int]]
        RGB outline colour per structure.
    n_slices : int
        How many slices, side by side.

    Returns
    -------
    bytes
        A PNG image.
    """
    occupied = np.flatnonzero(np.any([m.any(axis=(1, 2)) for m in masks.values()], axis=0)) if masks else []
    nz = ct.shape[0]
    first, last = (int(occupied[0]), int(occupied[-1])) if len(occupied) else (0, nz - 1)
    picks = np.unique(np.linspace(first, last, n_slices + 2)[1:-1].round().astype(int))
    tiles = []
    for k in picks:
        gray = _window(ct.voxels[k])
        rgb = np.repeat(gray[..., None], 3, axis=2)
        for name, mask in masks.items():
            edge = mask[k] & ~ndimage.binary_erosion(mask[k])
            rgb[edge] = colors.get(name, (255, 0, 0))
        tiles.append(rgb)
    image = Image.fromarray(np.concatenate(tiles, axis=1))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
