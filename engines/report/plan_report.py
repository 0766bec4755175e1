"""Plan report figures as PNG bytes: DVH curves and an axial dose wash on the CT.

Drawn with matplotlib's object API on the Agg canvas (no pyplot, no global state), so it is
safe in worker threads. Figure sizes are fixed (see ``DVH_FIGSIZE_IN``, ``WASH_*``) so that
reports lay out the same for every plan.
"""

from __future__ import annotations

import colorsys
import io
import zlib

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from scipy import ndimage

from rtgrid.engines.errors import EngineError
from rtgrid.engines.imaging.volume import Volume
from rtgrid.engines.report.overlay import WINDOW_CENTER_HU, WINDOW_WIDTH_HU

DPI = 100
DVH_FIGSIZE_IN = (8.0, 5.0)
"""DVH figure size in inches: 800 x 500 pixels at ``DPI``."""
WASH_TILE_IN = 4.0
"""Width and height (inches) given to each CT slice of the dose wash."""
WASH_COLORBAR_IN = 1.2
WASH_TITLE_IN = 0.6
WASH_LEGEND_ENTRY_IN = 1.0
WASH_THRESHOLD = 0.10
"""Dose below this fraction of the prescription is not coloured."""
ISODOSE_LEVELS = (0.50, 0.80, 0.95, 1.05)
"""Isodose lines (dashed; structures are solid), as fractions of the prescription."""
ISODOSE_COLORS = ("#1f77b4", "#2ca02c", "#ffbf00", "#d62728")
WASH_COLORMAP = "jet"
WASH_ALPHA = 0.35
CONVENTIONAL_COLORS: tuple[tuple[str, tuple[float, float, float]], ...] = (
    ("ptv", (0.90, 0.10, 0.10)),
    ("ctv", (1.00, 0.55, 0.00)),
    ("gtv", (0.85, 0.00, 0.85)),
    ("itv", (0.60, 0.20, 0.80)),
    ("body", (0.20, 0.75, 0.20)),
    ("external", (0.20, 0.75, 0.20)),
    ("heart", (0.75, 0.10, 0.45)),
    ("lung_l", (0.00, 0.75, 0.90)),
    ("lung_r", (0.95, 0.85, 0.10)),
    ("lung", (0.40, 0.85, 0.95)),
    ("spinalcord", (0.10, 0.30, 0.95)),
    ("spinal_cord", (0.10, 0.30, 0.95)),
    ("cord", (0.10, 0.30, 0.95)),
    ("esophagus", (0.60, 0.40, 0.20)),
    ("oesophagus", (0.60, 0.40, 0.20)),
    ("liver", (0.55, 0.27, 0.07)),
    ("kidney", (0.95, 0.50, 0.70)),
    ("bladder", (1.00, 0.85, 0.40)),
    ("rectum", (0.55, 0.35, 0.15)),
    ("bones", (0.85, 0.85, 0.70)),
)
"""Conventional display colours by name prefix (lower case), checked in order."""


class PlanReportError(EngineError, ValueError):
    """Inputs to a report figure are inconsistent; the message names the structure or array."""


def structure_color(name: str) -> tuple[float, float, float]:
    """A colour (RGB, 0..1) that depends only on the structure name, the same in every figure.

    Common structures get their conventional colour (``CONVENTIONAL_COLORS``, matched on the
    lower-case name's start); other names get a hue from a checksum of the name, so two rare
    names may look alike.

    Parameters
    ----------
    name : str
        Structure name.

    Returns
    -------
    tuple[float, float, float]
    """
    lowered = name.lower()
    for prefix, color in CONVENTIONAL_COLORS:
        if lowered.startswith(prefix):
            return color
    code = zlib.crc32(name.encode("utf-8"))
    hue = (code & 0xFFFF) / 0x10000
    value = (0.95, 0.78, 0.62)[(code >> 16) % 3]  # three brightness levels separate near-equal hues
    return colorsys.hsv_to_rgb(hue, 0.85, value)


def render_dvh_png(
    dvhs: dict[str, tuple[np.ndarray, np.ndarray]],
    *,
    reference: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
    title: str = "",
) -> bytes:
    """Cumulative DVH curves, one colour per structure; reference curves dashed in the same colour.

    Parameters
    ----------
    dvhs : dict[str, tuple[np.ndarray, np.ndarray]]
        Structure name -> ``(dose_gy, volume_pct)``: 1-D arrays of equal length, dose
        non-decreasing, volume in percent of the structure (0..100).
    reference : dict, optional
        The same for a reference plan (e.g. the standard plan), drawn dashed.
    title : str
        Figure title.

    Returns
    -------
    bytes
        A PNG of ``DVH_FIGSIZE_IN * DPI`` pixels.

    Raises
    ------
    PlanReportError
        A curve with mismatched or empty arrays, decreasing dose, non-finite values, or volume
        outside 0..100 %.
    """
    curves = {name: _checked_curve(name, curve) for name, curve in dvhs.items()}
    reference_curves = {name: _checked_curve(f"{name} (reference)", c) for name, c in (reference or {}).items()}
    figure = Figure(figsize=DVH_FIGSIZE_IN, dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    max_dose = 0.0
    for name, (dose, volume) in curves.items():
        axes.plot(dose, volume, color=structure_color(name), linewidth=1.8, label=name)
        max_dose = max(max_dose, float(dose[-1]))
    for name, (dose, volume) in reference_curves.items():
        label = None if name in curves else name
        axes.plot(dose, volume, color=structure_color(name), linewidth=1.4, linestyle="--", label=label)
        max_dose = max(max_dose, float(dose[-1]))
    axes.set_xlim(0.0, max(max_dose * 1.05, 1e-3))
    axes.set_ylim(0.0, 102.0)
    axes.set_xlabel("Dose (Gy)")
    axes.set_ylabel("Volume (%)")
    axes.grid(True, alpha=0.3)
    if title:
        axes.set_title(title)
    handles, _ = axes.get_legend_handles_labels()
    if reference_curves:
        handles += [
            Line2D([], [], color="0.3", linestyle="-", label="plan"),
            Line2D([], [], color="0.3", linestyle="--", label="reference"),
        ]
    if handles:
        axes.legend(handles=handles, loc="upper right", fontsize="small", ncols=2 if len(handles) > 10 else 1)
    figure.tight_layout()
    return _png(figure)


def dose_on_ct_slice(dose_gy: np.ndarray, dose_grid: Volume, ct: Volume, k: int) -> np.ndarray:
    """The dose at the pixel centres of CT slice ``k`` (trilinear, 0 outside the dose grid).

    Every CT pixel centre is mapped to LPS with the CT's geometry, then to continuous dose-grid
    indices with the dose grid's geometry, so grids of any spacing, origin and orientation meet.

    Parameters
    ----------
    dose_gy : np.ndarray
        ``(nz, ny, nx)`` dose on ``dose_grid``.
    dose_grid : Volume
        Geometry of the dose (voxels ignored).
    ct : Volume
        Geometry of the CT (voxels ignored).
    k : int
        CT slice index.

    Returns
    -------
    np.ndarray
        ``float32`` ``(ct ny, ct nx)`` in Gy.

    Raises
    ------
    PlanReportError
        ``dose_gy`` is not on ``dose_grid`` or ``k`` is outside the CT.
    """
    dose = np.asarray(dose_gy)
    if dose.shape != dose_grid.shape:
        raise PlanReportError(f"dose shape {dose.shape} is not the dose grid's shape {dose_grid.shape}")
    nz, ny, nx = ct.shape
    if not 0 <= k < nz:
        raise PlanReportError(f"CT slice {k} is outside the CT's {nz} slices")
    j, i = np.mgrid[0:ny, 0:nx].astype(np.float64)
    ijk = np.stack([i.ravel(), j.ravel(), np.full(i.size, float(k))], axis=1)
    dose_ijk = dose_grid.lps_to_index(ct.index_to_lps(ijk))
    coords = dose_ijk[:, ::-1].T  # (k, j, i) rows for map_coordinates
    values = ndimage.map_coordinates(dose.astype(np.float32, copy=False), coords, order=1, mode="constant", cval=0.0)
    return values.reshape(ny, nx)


def render_dose_wash_png(
    ct: Volume,
    dose_gy: np.ndarray,
    dose_grid: Volume,
    masks: dict[str, np.ndarray] | None = None,
    *,
    prescription_gy: float,
    n_slices: int = 3,
) -> bytes:
    """Axial CT slices with a dose colour wash, isodose lines and structure outlines.

    Slices: ``n_slices`` evenly spread over the CT slices that hold dose >= 50 % of the
    prescription, the one nearest the dose maximum replaced by the maximum's own slice (all
    slices spread over the CT when no voxel reaches 50 %).

    Parameters
    ----------
    ct : Volume
        CT in HU (soft-tissue window as in ``overlay``).
    dose_gy : np.ndarray
        Dose on ``dose_grid``, resampled onto each CT slice with :func:`dose_on_ct_slice`.
    dose_grid : Volume
        Geometry of the dose (usually coarser than the CT).
    masks : dict[str, np.ndarray], optional
        Boolean masks on the CT grid, outlined in :func:`structure_color`.
    prescription_gy : float
        Prescription dose: the wash starts at ``WASH_THRESHOLD`` of it, isodoses at ``ISODOSE_LEVELS``.
    n_slices : int
        Number of slices side by side (>= 1).

    Returns
    -------
    bytes
        A PNG of ``(n_slices * WASH_TILE_IN + WASH_COLORBAR_IN) x (WASH_TILE_IN + WASH_TITLE_IN)``
        inches at ``DPI``.

    Raises
    ------
    PlanReportError
        A non-positive prescription, ``n_slices < 1``, dose off its grid, or a mask off the CT grid.
    """
    if not prescription_gy > 0:
        raise PlanReportError(f"prescription_gy must be > 0, got {prescription_gy}")
    if n_slices < 1:
        raise PlanReportError(f"n_slices must be >= 1, got {n_slices}")
    dose = np.asarray(dose_gy, dtype=np.float32)
    if dose.shape != dose_grid.shape:
        raise PlanReportError(f"dose shape {dose.shape} is not the dose grid's shape {dose_grid.shape}")
    masks = masks or {}
    for name, mask in masks.items():
        if mask.shape != ct.shape:
            raise PlanReportError(f"mask {name!r} has shape {mask.shape}, not the CT's {ct.shape}")

    picks = _wash_slices(ct, dose, dose_grid, prescription_gy, n_slices)
    width = n_slices * WASH_TILE_IN + WASH_COLORBAR_IN
    figure = Figure(figsize=(width, WASH_TILE_IN + WASH_TITLE_IN), dpi=DPI)
    FigureCanvasAgg(figure)
    legend_entries = len(ISODOSE_LEVELS) + len(masks)
    legend_columns = max(1, min(legend_entries, int(width / WASH_LEGEND_ENTRY_IN)))
    legend_rows = -(-legend_entries // legend_columns)
    grid = figure.add_gridspec(
        1,
        n_slices + 1,
        width_ratios=[WASH_TILE_IN] * n_slices + [WASH_COLORBAR_IN * 0.25],
        bottom=0.04 + 0.05 * legend_rows,  # room for the legend under the slices
        top=0.86,
    )
    low_hu = WINDOW_CENTER_HU - WINDOW_WIDTH_HU / 2
    high_hu = WINDOW_CENTER_HU + WINDOW_WIDTH_HU / 2
    di, dj = ct.spacing_mm[0], ct.spacing_mm[1]
    wash_image = None
    for column, k in enumerate(picks):
        axes = figure.add_subplot(grid[0, column])
        axes.imshow(ct.voxels[k], cmap="gray", vmin=low_hu, vmax=high_hu, interpolation="nearest", aspect=dj / di)
        slice_dose = dose_on_ct_slice(dose, dose_grid, ct, k)
        washed = np.ma.masked_less(slice_dose, WASH_THRESHOLD * prescription_gy)
        wash_image = axes.imshow(
            washed,
            cmap=WASH_COLORMAP,
            vmin=WASH_THRESHOLD * prescription_gy,
            vmax=1.1 * prescription_gy,
            alpha=WASH_ALPHA,
            interpolation="nearest",
            aspect=dj / di,
        )
        levels = [level * prescription_gy for level in ISODOSE_LEVELS]
        present = [(lv, c) for lv, c in zip(levels, ISODOSE_COLORS) if slice_dose.min() < lv < slice_dose.max()]
        if present:
            axes.contour(
                slice_dose, levels=[lv for lv, _ in present], colors=[c for _, c in present], linewidths=1.0,
                linestyles="--",
            )
        for name, mask in masks.items():
            plane = np.asarray(mask[k], dtype=np.float32)
            if plane.any() and not plane.all():
                axes.contour(plane, levels=[0.5], colors=[structure_color(name)], linewidths=1.6)
        z_mm = float(ct.index_to_lps(np.array([0.0, 0.0, float(k)])) @ ct.direction[:, 2])
        axes.set_title(f"slice {k}  ({z_mm:.1f} mm)  max {slice_dose.max():.2f} Gy", fontsize="small")
        axes.set_xticks([])
        axes.set_yticks([])
    colorbar_axes = figure.add_subplot(grid[0, n_slices])
    figure.colorbar(wash_image, cax=colorbar_axes, label="Dose (Gy)")
    handles = [
        Line2D([], [], color=c, linestyle="--", label=f"{round(level * 100)} %")
        for level, c in zip(ISODOSE_LEVELS, ISODOSE_COLORS)
    ]
    handles += [Line2D([], [], color=structure_color(name), label=name) for name in masks]
    figure.legend(handles=handles, loc="lower center", ncols=legend_columns, fontsize="x-small", frameon=False)
    figure.suptitle(f"Dose wash, prescription {prescription_gy:g} Gy", fontsize="medium")
    return _png(figure)


def _wash_slices(ct: Volume, dose: np.ndarray, dose_grid: Volume, prescription_gy: float, n_slices: int) -> list[int]:
    nz = ct.shape[0]
    max_index = np.array(np.unravel_index(int(np.argmax(dose)), dose.shape), dtype=np.float64)
    k_max = _ct_slice_of(ct, dose_grid.index_to_lps(max_index[::-1]))
    high = np.argwhere(dose >= 0.5 * prescription_gy)  # (k, j, i) of the >= 50 % region
    if len(high):
        ct_k = ct.lps_to_index(dose_grid.index_to_lps(high[:, ::-1].astype(np.float64)))[:, 2]
        first, last = (int(np.clip(np.rint(v), 0, nz - 1)) for v in (ct_k.min(), ct_k.max()))
    else:
        first, last = 0, nz - 1
    picks = np.linspace(first, last, n_slices + 2)[1:-1].round().astype(int) if n_slices > 1 else np.array([k_max])
    picks[int(np.argmin(np.abs(picks - k_max)))] = k_max
    return sorted(int(k) for k in picks)


def _ct_slice_of(ct: Volume, point_mm: np.ndarray) -> int:
    return int(np.clip(np.rint(ct.lps_to_index(point_mm)[2]), 0, ct.shape[0] - 1))


def _checked_curve(name: str, curve: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    dose, volume = (np.asarray(a, dtype=np.float64) for a in curve)
    if dose.ndim != 1 or volume.ndim != 1 or dose.size != volume.size or dose.size == 0:
        raise PlanReportError(
            f"DVH of {name!r}: dose {dose.shape} and volume {volume.shape} must be 1-D arrays of equal, non-zero length"
        )
    if not (np.all(np.isfinite(dose)) and np.all(np.isfinite(volume))):
        raise PlanReportError(f"DVH of {name!r} holds NaN or infinite values")
    if np.any(np.diff(dose) < 0):
        raise PlanReportError(f"DVH of {name!r}: dose values must not decrease")
    if volume.min() < 0 or volume.max() > 100.0 + 1e-6:
        raise PlanReportError(f"DVH of {name!r}: volume {volume.min():.3g}..{volume.max():.3g} % is outside 0..100 %")
    return dose, volume


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


GAMMA_MAX = 2.0
"""Gamma values are drawn on 0..GAMMA_MAX; 1 is the pass/fail boundary."""


def render_gamma_png(gamma: np.ndarray, dose_grid: Volume, *, title: str = "", n_slices: int = 3) -> bytes:
    """Axial slices of a gamma map: where the plan passes (gamma <= 1) and fails, voxel by voxel.

    Parameters
    ----------
    gamma : np.ndarray
        Gamma index on ``dose_grid`` (``(nz, ny, nx)``), NaN where not evaluated (below threshold).
    dose_grid : Volume
        The grid's geometry (slice positions in the titles).
    title : str
        Figure title.
    n_slices : int
        Slices shown: the one with the most failing voxels and others spread over the evaluated region.

    Returns
    -------
    bytes
        A PNG image.
    """
    if gamma.shape != dose_grid.shape:
        raise PlanReportError(f"gamma map {gamma.shape} does not match the dose grid {dose_grid.shape}")
    evaluated = np.flatnonzero(np.isfinite(gamma).any(axis=(1, 2)))
    if evaluated.size == 0:
        raise PlanReportError("the gamma map holds no evaluated voxel")
    failing = np.nan_to_num(gamma > 1.0, nan=0).sum(axis=(1, 2))
    worst = int(np.argmax(failing)) if failing.any() else int(evaluated[evaluated.size // 2])
    spread = np.linspace(evaluated[0], evaluated[-1], n_slices + 2)[1:-1].round().astype(int)
    picks = sorted({worst, *spread.tolist()})[: max(n_slices, 1)]
    figure = Figure(figsize=(WASH_TILE_IN * len(picks) + WASH_COLORBAR_IN, WASH_TILE_IN + WASH_TITLE_IN), dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(picks), squeeze=False)[0]
    image = None
    for ax, k in zip(axes, picks):
        z_mm = float(dose_grid.index_to_lps(np.array([0.0, 0.0, k]))[2])
        shown = np.ma.masked_invalid(gamma[k])
        image = ax.imshow(shown, cmap="RdYlGn_r", vmin=0.0, vmax=GAMMA_MAX, interpolation="nearest")
        ax.set_facecolor("black")
        n_eval = int(np.isfinite(gamma[k]).sum())
        fail = int(np.nan_to_num(gamma[k] > 1.0, nan=0).sum())
        ax.set_title(f"slice {k} ({z_mm:.1f} mm): {fail}/{n_eval} fail", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    figure.colorbar(image, ax=list(axes), label="gamma", fraction=0.03)
    if title:
        figure.suptitle(title)
    return _png(figure)
