"""Step-and-shoot segments (MLC apertures with jaws and MU) and delivery violations.

Coordinates follow IEC 61217 in the beam-limiting-device frame, mm at the isocenter plane: leaves
move along ``X``; bank ``X1`` sits on the negative side and bank ``X2`` on the positive side, so an
open leaf pair has ``x1 < x2``; leaf pairs are numbered along ``Y`` from the most negative edge.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Segment:
    """One static MLC aperture of a step-and-shoot beam.

    Attributes
    ----------
    leaf_x1_mm, leaf_x2_mm : np.ndarray
        ``(n_pairs,)`` tip positions of the X1 and X2 bank leaves (mm at isocenter).
    jaw_x_mm : tuple of float
        ``(X1, X2)`` jaw positions (negative = X1 side); for a device without X jaws, the
        aperture's extent along X.
    jaw_y_mm : tuple of float
        ``(Y1, Y2)`` jaw positions.
    mu : float
        Monitor units of this segment for one fraction.
    """

    leaf_x1_mm: np.ndarray
    leaf_x2_mm: np.ndarray
    jaw_x_mm: tuple[float, float]
    jaw_y_mm: tuple[float, float]
    mu: float


@dataclass(frozen=True)
class Violation:
    """A reason a plan cannot be delivered as it stands on a device.

    Attributes
    ----------
    kind : str
        ``field_size``, ``leaf_travel``, ``leaf_gap``, ``interdigitation``, ``leaf_span``,
        ``jaw_travel``, ``segment_mu``, ``beam_mu``, ``segment_count`` or ``leaf_count``.
    beam : int or None
        Beam index in the plan.
    segment : int or None
        Segment index within the beam.
    message : str
        What is wrong, with the values and limits.
    """

    kind: str
    beam: int | None
    segment: int | None
    message: str


def open_fraction(segment: Segment, leaf_boundaries_mm: np.ndarray, row_edges_mm: np.ndarray,
                  column_edges_mm: np.ndarray) -> np.ndarray:
    """Open fraction of each cell of a rectangular lattice under a segment's leaves and jaws.

    Each lattice row must lie within one leaf pair (or outside the leaf bank, where only the jaws
    collimate); the open part of a row along X is ``[max(x1, jaw X1), min(x2, jaw X2)]``.

    Parameters
    ----------
    segment
    leaf_boundaries_mm
        The device's ``n_pairs + 1`` leaf-pair edges along Y.
    row_edges_mm, column_edges_mm
        Increasing cell edges along Y and X (mm at isocenter).

    Returns
    -------
    np.ndarray
        ``(n_rows, n_cols)`` fractions in [0, 1].
    """
    rows = np.asarray(row_edges_mm, dtype=np.float64)
    cols = np.asarray(column_edges_mm, dtype=np.float64)
    centres = 0.5 * (rows[:-1] + rows[1:])
    pair = np.searchsorted(leaf_boundaries_mm, centres, side="right") - 1
    in_bank = (pair >= 0) & (pair < len(leaf_boundaries_mm) - 1)
    safe = np.clip(pair, 0, len(leaf_boundaries_mm) - 2)
    jx1, jx2 = segment.jaw_x_mm
    lo = np.where(in_bank, np.maximum(np.asarray(segment.leaf_x1_mm)[safe], jx1), jx1)
    hi = np.where(in_bank, np.minimum(np.asarray(segment.leaf_x2_mm)[safe], jx2), jx2)
    x_open = np.clip(np.minimum(hi[:, None], cols[None, 1:]) - np.maximum(lo[:, None], cols[None, :-1]), 0.0, None)
    x_frac = x_open / np.diff(cols)[None, :]
    jy1, jy2 = segment.jaw_y_mm
    y_open = np.clip(np.minimum(jy2, rows[1:]) - np.maximum(jy1, rows[:-1]), 0.0, None)
    return x_frac * (y_open / np.diff(rows))[:, None]
