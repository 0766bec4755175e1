"""The network's input channels, built per voxel on the CT grid.

Channels, in order: the CT (HU windowed to [-1000, 1500], divided by 1000); one channel per
prescription level, highest first, holding that level's dose (divided by
:data:`REFERENCE_DOSE_GY`) inside its target, the higher level winning where targets overlap;
one binary channel per organ at risk (:data:`OAR_CHANNELS`, TG-263 names; zero when not
contoured); the body mask; one channel per prescription level with the signed 3D distance (mm)
to that level's target (:func:`target_distances`).

The distances are the network's only view beyond its few adjacent slices: how far above or below
a slice the targets lie, which sets how fast the dose falls off there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage

from rtgrid.engines.errors import EngineError

OAR_CHANNELS: tuple[str, ...] = ("Brainstem", "SpinalCord", "Parotid_R", "Parotid_L", "Esophagus", "Larynx", "Bone_Mandible")
"""Organs at risk with an input channel, by TG-263 name (OpenKBP's seven)."""
N_LEVELS = 3
"""Prescription-level channels (a simultaneous integrated boost of up to three levels)."""
BODY_CHANNEL = 1 + N_LEVELS + len(OAR_CHANNELS)
DISTANCE_CHANNELS = BODY_CHANNEL + 1
"""The first of the :data:`N_LEVELS` target distance channels."""
N_CHANNELS = DISTANCE_CHANNELS + N_LEVELS
DISTANCE_RANGE_MM = (-30.0, 90.0)
"""Signed distances to a target (negative inside) are clipped to this range and divided by its
upper end; an absent level is everywhere as far as the range goes."""
MIRRORED_PAIRS: tuple[tuple[str, str], ...] = (("Parotid_R", "Parotid_L"),)
"""Organ channels that trade places in the patient's mirror image."""
REFERENCE_DOSE_GY = 70.0
"""Doses in and out of the network are divided by this (the OpenKBP high-dose prescription)."""
HU_WINDOW = (-1000.0, 1500.0)


class DoseInputError(EngineError, ValueError):
    """Inputs the model cannot take: mismatched shapes, too many or unusable prescription levels."""


def build_inputs(
    ct_hu: np.ndarray,
    body: np.ndarray,
    oars: Mapping[str, np.ndarray],
    targets: Sequence[tuple[float, np.ndarray]],
    spacing_mm: Sequence[float],
) -> np.ndarray:
    """The input channels for one patient.

    Parameters
    ----------
    ct_hu : np.ndarray
        CT in HU, ``[z, y, x]``.
    body : np.ndarray
        bool ``[z, y, x]``: the body (OpenKBP's possible dose mask).
    oars : Mapping[str, np.ndarray]
        TG-263 name -> bool mask; names outside :data:`OAR_CHANNELS` are ignored, absent ones
        leave their channel zero.
    targets : Sequence[tuple[float, np.ndarray]]
        ``(prescribed dose in Gy, bool target mask)`` per level, at most :data:`N_LEVELS`.
    spacing_mm : Sequence[float]
        Voxel size (column, row, slice) in mm, as :attr:`Volume.spacing_mm`: for the distances.

    Returns
    -------
    np.ndarray
        float32 ``[N_CHANNELS, z, y, x]``.

    Raises
    ------
    DoseInputError
        A mask's shape differs from the CT's, no or too many levels, or a dose that is not positive.
    """
    shape = ct_hu.shape
    if not targets:
        raise DoseInputError("dose prediction needs at least one prescription level (dose and target)")
    if len(targets) > N_LEVELS:
        raise DoseInputError(f"{len(targets)} prescription levels; the model takes at most {N_LEVELS}")
    for name, mask in [("body", body), *oars.items(), *((f"target of {d} Gy", m) for d, m in targets)]:
        if mask.shape != shape:
            raise DoseInputError(f"{name} has shape {mask.shape}, the CT {shape}")
    for dose_gy, _ in targets:
        if not dose_gy > 0:
            raise DoseInputError(f"prescription level {dose_gy} Gy is not a positive dose")
    levels = sorted(targets, key=lambda t: -float(t[0]))
    distances = target_distances([mask for _, mask in levels], spacing_mm)
    return assemble_inputs(ct_hu, body, oars, levels, distances)


def assemble_inputs(
    ct_hu: np.ndarray,
    body: np.ndarray,
    oars: Mapping[str, np.ndarray],
    levels: Sequence[tuple[float, np.ndarray]],
    distances: np.ndarray,
) -> np.ndarray:
    """:func:`build_inputs` from checked inputs, levels highest first and their distances given
    (training computes a patient's distances once and assembles runs of its slices)."""
    shape = ct_hu.shape
    out = np.zeros((N_CHANNELS, *shape), dtype=np.float32)
    out[0] = np.clip(ct_hu.astype(np.float32), *HU_WINDOW) / 1000.0
    covered = np.zeros(shape, dtype=bool)
    for i, (dose_gy, mask) in enumerate(levels):
        own = mask.astype(bool) & ~covered  # the higher level wins on overlap
        out[1 + i][own] = float(dose_gy) / REFERENCE_DOSE_GY
        covered |= own
    for i, name in enumerate(OAR_CHANNELS):
        if name in oars:
            out[1 + N_LEVELS + i] = oars[name]
    out[BODY_CHANNEL] = body
    out[DISTANCE_CHANNELS:] = distances
    return out


def target_distances(masks: Sequence[np.ndarray], spacing_mm: Sequence[float]) -> np.ndarray:
    """Signed 3D distance (mm; negative inside) to each target, clipped to :data:`DISTANCE_RANGE_MM`
    and divided by its upper end.

    Parameters
    ----------
    masks : Sequence[np.ndarray]
        bool ``[z, y, x]`` per level, highest first, at most :data:`N_LEVELS`; levels beyond them
        (and empty masks) are as far as the range goes (1.0).
    spacing_mm : Sequence[float]
        Voxel size (column, row, slice) in mm.

    Returns
    -------
    np.ndarray
        float32 ``[N_LEVELS, z, y, x]``.
    """
    shape = masks[0].shape
    near, far = DISTANCE_RANGE_MM
    sampling = (float(spacing_mm[2]), float(spacing_mm[1]), float(spacing_mm[0]))
    out = np.ones((N_LEVELS, *shape), dtype=np.float32)
    for i, mask in enumerate(masks):
        mask = np.asarray(mask, dtype=bool)
        if not mask.any():
            continue
        # Beyond `far` of the target's bounding box every distance is clipped: work inside it.
        box = []
        for axis, step in enumerate(sampling):
            hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
            margin = int(np.ceil(far / step)) + 1
            box.append(slice(max(0, hit[0] - margin), min(shape[axis], hit[-1] + margin + 1)))
        part = mask[tuple(box)]
        signed = ndimage.distance_transform_edt(~part, sampling=sampling)
        signed -= ndimage.distance_transform_edt(part, sampling=sampling)
        out[(i, *box)] = np.clip(signed, near, far) / far
    return out


def mirror_inputs(inputs: np.ndarray) -> np.ndarray:
    """The input channels of the patient's left-right mirror image.

    Parameters
    ----------
    inputs : np.ndarray
        ``[N_CHANNELS, ..., x]`` (as :func:`build_inputs` gives): channels first, image columns
        last. Columns run along the patient's left-right axis in every axial CT (head or feet
        first, supine or prone), so reversing them mirrors the patient (the distances with it).

    Returns
    -------
    np.ndarray
        A new array: columns reversed, the channels of :data:`MIRRORED_PAIRS` swapped.
    """
    out = inputs[..., ::-1].copy()
    for right, left in MIRRORED_PAIRS:
        r, l = (1 + N_LEVELS + OAR_CHANNELS.index(name) for name in (right, left))
        out[[r, l]] = out[[l, r]]
    return out
