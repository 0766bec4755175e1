"""The global half of classical contouring: 3-D components, selection and the left/right split."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

from rtgrid.engines.imaging.volume import Volume
from rtgrid.engines.segmentation.classical import definitions as d
from rtgrid.engines.segmentation.classical.slab_contouring import CROSS_3D, contour_slab
from rtgrid.engines.segmentation.classical.slabs import SlabPlanError, SlabResult, plan_slabs

MAX_SPLIT_EROSIONS = 15
"""Erosion steps (one voxel each) tried when both lungs arrive as one component."""


def merge_slabs(results: Sequence[SlabResult], volume: Volume) -> dict[str, np.ndarray]:
    """Assemble slab results and take the global decisions.

    Parameters
    ----------
    results : Sequence[SlabResult]
        One per slab of a plan; together their cores must tile the volume's slices.
    volume : Volume
        The CT (HU), for its geometry and the lung/gas median-HU test.

    Returns
    -------
    dict[str, np.ndarray]
        ``"BODY"``, ``"Lung_L"``, ``"Lung_R"``, ``"Bones"``, ``"AirCavity"`` -> bool ``(nz, ny, nx)``.

    Raises
    ------
    SlabPlanError
        When the slab cores leave a gap, overlap, or do not match the volume's slice size.
    """
    bits = _assemble(results, volume)
    ml_per_voxel = volume.voxel_volume_mm3 / 1000.0

    body = _patient_components(bits & np.uint8(d.BIT_BODY) > 0, volume)
    air = (bits & np.uint8(d.BIT_AIR) > 0) & body
    airway_like = bits & np.uint8(d.BIT_AIRWAY_LIKE) > 0
    lung_l, lung_r = _lungs(air & ~airway_like, body, volume, ml_per_voxel)
    bones = _drop_small_components(
        (bits & np.uint8(d.BIT_BONE) > 0) & body, int(np.ceil(d.BONE_MIN_ML / ml_per_voxel))
    )
    return {
        "BODY": body,
        "Lung_L": lung_l,
        "Lung_R": lung_r,
        "Bones": bones,
        "AirCavity": air & ~lung_l & ~lung_r,
    }


def contour_volume(volume: Volume) -> dict[str, np.ndarray]:
    """Contour a whole CT in one piece; identical to any sharded run of the same volume.

    Parameters
    ----------
    volume : Volume
        CT in HU.

    Returns
    -------
    dict[str, np.ndarray]
        As :func:`merge_slabs`.
    """
    (slab,) = plan_slabs(volume.shape[0], 1)
    result = contour_slab(volume.voxels, volume.spacing_mm, volume.direction, slab)
    return merge_slabs([result], volume)


def _assemble(results: Sequence[SlabResult], volume: Volume) -> np.ndarray:
    nz, ny, nx = volume.shape
    bits = np.zeros((nz, ny, nx), dtype=np.uint8)
    covered = np.zeros(nz, dtype=np.int64)
    for result in results:
        slab = result.slab
        expected = (slab.z_stop - slab.z_start, ny, nx)
        if result.bits.shape != expected or not 0 <= slab.z_start < slab.z_stop <= nz:
            raise SlabPlanError(
                f"slab {slab.index} [{slab.z_start}, {slab.z_stop}) carries bits of shape {result.bits.shape}; "
                f"the volume {volume.shape} needs {expected}"
            )
        bits[slab.z_start : slab.z_stop] = result.bits
        covered[slab.z_start : slab.z_stop] += 1
    if np.any(covered != 1):
        missing = np.flatnonzero(covered == 0).tolist()
        doubled = np.flatnonzero(covered > 1).tolist()
        raise SlabPlanError(f"slab cores must tile slices 0..{nz - 1}: missing {missing}, overlapping {doubled}")
    return bits


def _patient_components(mask: np.ndarray, volume: Volume) -> np.ndarray:
    """Keep the 3-D components made of patient tissue: the largest and those not much smaller."""
    labels, n = ndimage.label(mask, structure=CROSS_3D)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    low, high = d.SOFT_TISSUE_HU
    tissue = (volume.voxels >= low) & (volume.voxels < high)
    tissue_counts = np.bincount(labels[tissue], minlength=n + 1)
    is_patient = tissue_counts >= d.BODY_MIN_TISSUE_FRACTION * sizes
    is_patient[0] = False
    if not is_patient.any():
        return np.zeros(mask.shape, dtype=bool)
    keep = is_patient & (sizes >= d.BODY_KEEP_FRACTION * sizes[is_patient].max())
    return keep[labels]


def _drop_small_components(mask: np.ndarray, min_voxels: int) -> np.ndarray:
    labels, n = ndimage.label(mask, structure=CROSS_3D)
    if n == 0:
        return mask
    keep = np.bincount(labels.ravel(), minlength=n + 1) >= min_voxels
    keep[0] = False
    return keep[labels]


def _lungs(
    candidate: np.ndarray, body: np.ndarray, volume: Volume, ml_per_voxel: float
) -> tuple[np.ndarray, np.ndarray]:
    """Select lung components and assign them to the patient's left (+x LPS) and right."""
    labels, n = ndimage.label(candidate, structure=CROSS_3D)
    empty = np.zeros(candidate.shape, dtype=bool)
    if n == 0:
        return empty, empty.copy()
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    boxes = ndimage.find_objects(labels)
    lung_ids = [
        label
        for label in np.argsort(-sizes[1:], kind="stable") + 1
        if sizes[label] * ml_per_voxel >= d.LUNG_MIN_ML
        and np.median(volume.voxels[boxes[label - 1]][labels[boxes[label - 1]] == label]) >= d.LUNG_MIN_MEDIAN_HU
    ]
    if not lung_ids:
        return empty, empty.copy()
    if len(lung_ids) == 1:
        parts = _split_in_two(labels == lung_ids[0])
        if parts is None:
            # One lung in the scan: its side is where it lies relative to the body's centre.
            lung = labels == lung_ids[0]
            return (lung, empty) if _centroid_x(lung, volume) > _centroid_x(body, volume) else (empty, lung)
        return _by_side(parts[0], parts[1], [], volume)
    big_a, big_b = labels == lung_ids[0], labels == lung_ids[1]
    others = [labels == i for i in lung_ids[2:]]
    return _by_side(big_a, big_b, others, volume)


def _by_side(
    a: np.ndarray, b: np.ndarray, others: list[np.ndarray], volume: Volume
) -> tuple[np.ndarray, np.ndarray]:
    xa, xb = _centroid_x(a, volume), _centroid_x(b, volume)
    left, right = (a, b) if xa > xb else (b, a)
    x_left, x_right = max(xa, xb), min(xa, xb)
    for part in others:
        x = _centroid_x(part, volume)
        if abs(x - x_left) < abs(x - x_right):
            left = left | part
        else:
            right = right | part
    return left, right


def _centroid_x(mask: np.ndarray, volume: Volume) -> float:
    """LPS x (mm, + = patient left) of a mask's centroid, from the grid's direction and origin."""
    k, j, i = (np.mean(axis) for axis in np.nonzero(mask))
    return float(volume.index_to_lps(np.array([i, j, k]))[0])


def _split_in_two(component: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Split a component where erosion first leaves two substantial parts; grow them back geodesically."""
    box = ndimage.find_objects(component.astype(np.uint8))[0]
    region = component[box]
    core = region
    for _ in range(MAX_SPLIT_EROSIONS):
        core = ndimage.binary_erosion(core, structure=CROSS_3D)
        seeds, n = ndimage.label(core, structure=CROSS_3D)
        if n < 2:
            if n == 0:
                return None
            continue
        sizes = np.bincount(seeds.ravel())[1:]
        order = np.argsort(-sizes, kind="stable")
        if sizes[order[1]] < 0.1 * sizes[order[0]]:
            continue
        owner = np.zeros(region.shape, dtype=np.uint8)
        owner[seeds == order[0] + 1] = 1
        owner[seeds == order[1] + 1] = 2
        while True:
            free = region & (owner == 0)
            grow_a = ndimage.binary_dilation(owner == 1, structure=CROSS_3D) & free
            grow_b = ndimage.binary_dilation(owner == 2, structure=CROSS_3D) & free & ~grow_a
            if not grow_a.any() and not grow_b.any():
                break
            owner[grow_a] = 1
            owner[grow_b] = 2
        parts = []
        for value in (1, 2):
            part = np.zeros(component.shape, dtype=bool)
            part[box] = owner == value
            parts.append(part)
        return parts[0], parts[1]
    return None
