"""Fused PNG overlays of the planning CT and a registered MR or PET, for a person to check.

Drawn with matplotlib's object API on the Agg canvas (no pyplot, no global state), so it is safe
in a worker thread.
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from rtgrid.engines.imaging.volume import Volume
from rtgrid.engines.registration.errors import RegistrationError

CT_WINDOW_HU = (-160.0, 240.0)
"""Soft-tissue window (level 40, width 400)."""
BODY_THRESHOLD_HU = -400.0


def fused_overlay_png(
    ct: Volume,
    registered: Volume,
    *,
    title: str = "",
    point_mm: np.ndarray | None = None,
    moving_label: str = "MR",
    alpha: float = 0.45,
    dpi: int = 100,
) -> bytes:
    """Axial, coronal and sagittal planes of the CT with the registered image fused in colour.

    Parameters
    ----------
    ct : Volume
        The planning CT (HU).
    registered : Volume
        The moving image resampled on the CT's grid (``resample_to_fixed`` / ``resample_deformed``).
    title : str
        Figure title (e.g. the registration's error figures).
    point_mm : np.ndarray, optional
        LPS point (mm) the three planes pass through; the CT's centre when omitted.
    moving_label : str
        Name of the fused image in the legend (``"MR"``, ``"PET"``).
    alpha : float
        Opacity of the fused image, 0..1.
    dpi : int
        Resolution of the PNG.

    Returns
    -------
    bytes
        A PNG image.

    Raises
    ------
    RegistrationError
        ``registered`` is not on the CT's grid, or ``point_mm`` lies outside the CT.
    """
    if not ct.same_grid(registered):
        raise RegistrationError(
            f"the registered image (shape {registered.shape}) is not on the CT's grid (shape {ct.shape}); "
            "resample it with resample_to_fixed first"
        )
    if point_mm is None:
        index = (np.array(ct.shape[::-1]) - 1) // 2
    else:
        index = np.rint(ct.lps_to_index(np.asarray(point_mm, dtype=np.float64))).astype(int)
        if np.any(index < 0) or np.any(index >= np.array(ct.shape[::-1])):
            raise RegistrationError(f"point {list(point_mm)} mm lies outside the CT")
    i, j, k = (int(v) for v in index)
    moving = registered.voxels.astype(np.float32)
    high = float(np.percentile(moving, 99.5)) or 1.0
    di, dj, dk = ct.spacing_mm
    # Show the body (CT above -400 HU) with a small margin, not the empty field of view.
    body = np.argwhere(ct.voxels > BODY_THRESHOLD_HU)
    low, high_index = (body.min(axis=0), body.max(axis=0) + 1) if len(body) else ((0, 0, 0), ct.shape)
    ks, js, is_ = (slice(max(int(lo) - 3, 0), int(hi) + 3) for lo, hi in zip(low, high_index))
    planes = (
        ("axial", ct.voxels[k, js, is_], moving[k, js, is_], dj / di),
        ("coronal", ct.voxels[ks, j, is_][::-1], moving[ks, j, is_][::-1], dk / di),
        ("sagittal", ct.voxels[ks, js, i][::-1], moving[ks, js, i][::-1], dk / dj),
    )
    figure = Figure(figsize=(12, 4.4), dpi=dpi)
    FigureCanvasAgg(figure)
    for n, (name, ct_plane, moving_plane, aspect) in enumerate(planes):
        axes = figure.add_subplot(1, 3, n + 1)
        axes.imshow(ct_plane, cmap="gray", vmin=CT_WINDOW_HU[0], vmax=CT_WINDOW_HU[1], aspect=aspect, interpolation="nearest")
        shown = np.ma.masked_less_equal(moving_plane, 0.02 * high)
        axes.imshow(shown, cmap="hot", vmin=0.0, vmax=high, alpha=alpha, aspect=aspect, interpolation="nearest")
        axes.set_title(f"{name}: CT + {moving_label}", fontsize=9)
        axes.set_axis_off()
    if title:
        figure.suptitle(title, fontsize=10)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
