"""Post-processing of a label map, driven by the model card (not by code branches per organ)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from rtgrid.engines.segmentation.deep.card import ModelCard


def _bounding_box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    coordinates = np.nonzero(mask)
    return tuple(
        slice(max(0, int(c.min()) - margin), min(size, int(c.max()) + margin + 1))
        for c, size in zip(coordinates, mask.shape)
    )


def postprocess(labels: np.ndarray, card: ModelCard) -> np.ndarray:
    """Clean a uint8 label map: light in-plane smoothing, largest component, hole filling.

    For each class, in card order: an in-plane binary opening then closing of radius
    ``card.smoothing_radius_vox`` (removes specks and notches); the largest 3-D connected
    component (26-connectivity) when the label's ``largest_component`` flag is set; filling of
    enclosed holes slice by slice when ``card.fill_holes`` is set. Smoothing and hole filling
    only ever claim background voxels, so one class never overwrites another.

    Parameters
    ----------
    labels : np.ndarray
        ``(nz, ny, nx)`` uint8 class indices of the card.
    card : ModelCard
        Supplies the per-label and global post-processing flags.

    Returns
    -------
    np.ndarray
        A new uint8 label map of the same shape.
    """
    if labels.ndim != 3:
        raise ValueError(f"labels must be (nz, ny, nx), got shape {labels.shape}")
    out = labels.astype(np.uint8, copy=True)
    radius = card.smoothing_radius_vox
    in_plane = None
    if radius > 0:
        disk = ndimage.iterate_structure(ndimage.generate_binary_structure(2, 1), radius)
        in_plane = disk[None]  # (1, r, r): acts within each slice only
    margin = radius + 1
    for label in card.labels:
        present = out == label.index
        if not present.any():
            continue
        box = _bounding_box(present, margin)
        region = out[box]
        mask = region == label.index
        if in_plane is not None:
            # Outside the array counts as inside, so organs cut by the field of view keep their edge.
            mask = ndimage.binary_dilation(ndimage.binary_erosion(mask, in_plane, border_value=1), in_plane)
            mask = ndimage.binary_erosion(ndimage.binary_dilation(mask, in_plane), in_plane, border_value=1)
        if label.largest_component and mask.any():
            components, count = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
            if count > 1:
                sizes = np.bincount(components.ravel())
                sizes[0] = 0
                mask = components == int(sizes.argmax())
        if card.fill_holes:
            for z in range(mask.shape[0]):
                mask[z] = ndimage.binary_fill_holes(mask[z])
        # Remove what smoothing/selection dropped; add only over background.
        region[(region == label.index) & ~mask] = 0
        region[mask & (region == 0)] = label.index
    return out
