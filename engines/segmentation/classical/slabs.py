"""Splitting a volume into z-slabs that can be contoured independently, then merged exactly."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rtgrid.engines.errors import EngineError
from rtgrid.engines.segmentation.classical.definitions import HALO_SLICES


class SlabPlanError(EngineError, ValueError):
    """A slab plan or slab result does not fit the volume it is used with."""


@dataclass(frozen=True)
class Slab:
    """One piece of a volume along the slice axis.

    Attributes
    ----------
    index : int
        Position of the slab in its plan (0, 1, ...).
    z_start, z_stop : int
        The core slices ``[z_start, z_stop)`` whose result this slab owns.
    halo_start, halo_stop : int
        The slices ``[halo_start, halo_stop)`` it reads: the core plus up to ``halo`` on each
        side, clipped to the volume.
    """

    index: int
    z_start: int
    z_stop: int
    halo_start: int
    halo_stop: int


@dataclass(frozen=True)
class SlabResult:
    """The per-slab labels of a slab's core slices, as one bit-field.

    Attributes
    ----------
    slab : Slab
        The slab these labels belong to.
    bits : np.ndarray
        ``uint8`` ``(z_stop - z_start, ny, nx)``; bits as in
        :mod:`rtgrid.engines.segmentation.classical.definitions` (``BIT_BODY``, ...).
    """

    slab: Slab
    bits: np.ndarray


def plan_slabs(nz: int, n_parts: int, halo: int = HALO_SLICES) -> list[Slab]:
    """Split ``nz`` slices into ``n_parts`` contiguous slabs of near-equal size.

    Parameters
    ----------
    nz : int
        Number of slices in the volume.
    n_parts : int
        Number of slabs wanted; more than ``nz`` gives ``nz`` one-slice slabs.
    halo : int
        Context slices read on each side of a core.

    Returns
    -------
    list[Slab]
        Cores tile ``[0, nz)`` in order without overlap.

    Raises
    ------
    SlabPlanError
        When ``nz`` or ``n_parts`` is below 1 or ``halo`` is negative.
    """
    if nz < 1 or n_parts < 1 or halo < 0:
        raise SlabPlanError(f"cannot plan slabs for nz={nz}, n_parts={n_parts}, halo={halo}")
    n = min(n_parts, nz)
    bounds = np.linspace(0, nz, n + 1).round().astype(int)
    return [
        Slab(
            index=p,
            z_start=int(bounds[p]),
            z_stop=int(bounds[p + 1]),
            halo_start=max(0, int(bounds[p]) - halo),
            halo_stop=min(nz, int(bounds[p + 1]) + halo),
        )
        for p in range(n)
    ]
