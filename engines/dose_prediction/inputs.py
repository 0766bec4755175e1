"""The network's input channels, built per voxel on the CT grid.

Channels, in order: the CT (HU windowed to [-1000, 1500], divided by 1000); one channel per
prescription level, highest first, holding that level's dose (divided by
:data:`REFERENCE_DOSE_GY`) inside its target, the higher level winning where targets overlap;
one binary channel per organ at risk (:data:`OAR_CHANNELS`, TG-263 names; zero when not
contoured); the body mask.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from rtgrid.engines.errors import EngineError

OAR_CHANNELS: tuple[str, ...] = ("Brainstem", "SpinalCord", "Parotid_R", "Parotid_L", "Esophagus", "Larynx", "Bone_Mandible")
"""Organs at risk with an input channel, by TG-263 name (OpenKBP's seven)."""
N_LEVELS = 3
"""Prescription-level channels (a simultaneous integrated boost of up to three levels)."""
N_CHANNELS = 1 + N_LEVELS + len(OAR_CHANNELS) + 1
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
) -> np.ndarray:
    """The input channels for one patient (or a run of its axial slices).

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
    out = np.zeros((N_CHANNELS, *shape), dtype=np.float32)
    out[0] = np.clip(ct_hu.astype(np.float32), *HU_WINDOW) / 1000.0
    levels = sorted(targets, key=lambda t: -float(t[0]))
    covered = np.zeros(shape, dtype=bool)
    for i, (dose_gy, mask) in enumerate(levels):
        if not dose_gy > 0:
            raise DoseInputError(f"prescription level {dose_gy} Gy is not a positive dose")
        own = mask.astype(bool) & ~covered  # the higher level wins on overlap
        out[1 + i][own] = float(dose_gy) / REFERENCE_DOSE_GY
        covered |= own
    for i, name in enumerate(OAR_CHANNELS):
        if name in oars:
            out[1 + N_LEVELS + i] = oars[name]
    out[-1] = body
    return out


def mirror_inputs(inputs: np.ndarray) -> np.ndarray:
    """The input channels of the patient's left-right mirror image.

    Parameters
    ----------
    inputs : np.ndarray
        ``[N_CHANNELS, ..., x]`` (as :func:`build_inputs` gives): channels first, image columns
        last. Columns run along the patient's left-right axis in every axial CT (head or feet
        first, supine or prone), so reversing them mirrors the patient.

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
