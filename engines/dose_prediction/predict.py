"""Predict a patient's dose on its CT grid, slice by slice with the model's slice context."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from .calibration import calibrate_targets
from .inputs import OAR_CHANNELS, REFERENCE_DOSE_GY, DoseInputError, build_inputs, mirror_inputs
from .model import DoseUNet

MODEL_SPACING_RANGE_MM = ((3.5, 5.5), (3.5, 5.5), (2.0, 3.3))
"""Voxel sizes (column, row, slice; mm) of the OpenKBP grids the model learned on (3.75-5.42 mm
across, 2-3.27 mm between slices): it sees anatomy at that scale only."""
MODEL_SPACING_MM = (3.906, 3.906, 3.0)
"""The size an axis outside :data:`MODEL_SPACING_RANGE_MM` is resampled to (OpenKBP's commonest)."""


def slice_windows(inputs: np.ndarray, centres: np.ndarray, context: int) -> np.ndarray:
    """``[len(centres), C * context, y, x]``: each centre slice with its neighbours stacked as
    channels; beyond the volume's ends the inputs are zero (nothing there, as outside the body)."""
    channels, nz = inputs.shape[:2]
    half = context // 2
    out = np.zeros((len(centres), context, channels, *inputs.shape[2:]), dtype=np.float32)
    for j, k in enumerate(centres):
        lo, hi = max(0, k - half), min(nz, k + half + 1)
        out[j, lo - (k - half) : hi - (k - half)] = inputs[:, lo:hi].transpose(1, 0, 2, 3)
    return out.reshape(len(centres), context * channels, *inputs.shape[2:])


def _pad_to(x: np.ndarray, multiple: int) -> tuple[np.ndarray, tuple[int, int]]:
    ny, nx = x.shape[-2:]
    py, px = -ny % multiple, -nx % multiple
    return np.pad(x, [(0, 0)] * (x.ndim - 2) + [(0, py), (0, px)]), (ny, nx)


def prediction_options(card: Mapping[str, Any]) -> dict[str, Any]:
    """What a package's card asks of every prediction: the keyword arguments ``context``,
    ``mirror`` and ``target_calibration`` of :func:`predict_dose` and :func:`predict_patient_dose`."""
    return {"context": card["architecture"]["context"], "mirror": bool(card.get("test_time_mirror")),
            "target_calibration": card.get("target_calibration")}


@torch.no_grad()
def predict_dose(model: DoseUNet, inputs: np.ndarray, body: np.ndarray, *, context: int, mirror: bool = False,
                 target_calibration: Mapping[str, Any] | None = None, batch: int = 16,
                 device: str | None = None) -> np.ndarray:
    """Dose in Gy per voxel on the CT grid, zero outside the body.

    Parameters
    ----------
    model : DoseUNet
        As loaded by :func:`rtgrid.engines.dose_prediction.load_dose_package`.
    inputs : np.ndarray
        ``[C, z, y, x]`` from :func:`rtgrid.engines.dose_prediction.build_inputs`.
    body : np.ndarray
        bool ``[z, y, x]``.
    context : int
        The model's slice context (its card's ``architecture.context``).
    mirror : bool
        Average the prediction with that of the patient's mirror image, mirrored back (the card's
        ``test_time_mirror``: a model trained on mirrored patients as well); twice the time.
    target_calibration : Mapping, optional
        The card's ``target_calibration``: each target's dose-volume histogram corrected
        (:func:`~rtgrid.engines.dose_prediction.calibration.calibrate_targets`).
    batch : int
        Slices per forward pass.
    device : str, optional
        Torch device; CUDA when available, else CPU. On CUDA the forward pass runs under autocast.

    Returns
    -------
    np.ndarray
        float32 ``[z, y, x]`` in Gy.

    Raises
    ------
    DoseInputError
        The model takes another number of input channels (a package older than these inputs).
    """
    takes = model.in_channels
    if inputs.shape[0] * context != takes:
        raise DoseInputError(f"the model takes {takes // context} input channels per slice, the inputs have "
                             f"{inputs.shape[0]}: a dose model package from another release of the inputs")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device).eval()
    dose = _predict(model, inputs, body, context, batch, device)
    if mirror:
        dose = 0.5 * (dose + _predict(model, mirror_inputs(inputs), body[..., ::-1], context, batch, device)[..., ::-1])
    return calibrate_targets(dose, inputs, target_calibration) * body  # a target may reach past the body


def _predict(model: DoseUNet, inputs: np.ndarray, body: np.ndarray, context: int, batch: int, device: str) -> np.ndarray:
    multiple = model.multiple
    nz = inputs.shape[1]
    dose = np.zeros(body.shape, dtype=np.float32)
    # Slices without body get no dose: skip them.
    slices = np.flatnonzero(body.reshape(nz, -1).any(axis=1))
    autocast = torch.autocast("cuda") if device.startswith("cuda") else contextlib.nullcontext()
    for start in range(0, len(slices), batch):
        centres = slices[start : start + batch]
        x, (ny, nx) = _pad_to(slice_windows(inputs, centres, context), multiple)
        with autocast:
            y = model(torch.from_numpy(x).to(device))
        dose[centres] = y.float().cpu().numpy()[:, :ny, :nx]
    return dose * REFERENCE_DOSE_GY * body


def model_spacing(spacing_mm: Sequence[float]) -> tuple[float, float, float]:
    """The voxel size (column, row, slice; mm) a CT of ``spacing_mm`` is predicted on: its own
    along axes inside :data:`MODEL_SPACING_RANGE_MM`, :data:`MODEL_SPACING_MM` along the others."""
    return tuple(float(s) if lo <= s <= hi else model
                 for s, (lo, hi), model in zip(spacing_mm, MODEL_SPACING_RANGE_MM, MODEL_SPACING_MM))


def predict_patient_dose(model: DoseUNet, ct_hu: np.ndarray, body: np.ndarray, oars: Mapping[str, np.ndarray],
                         targets: Sequence[tuple[float, np.ndarray]], spacing_mm: Sequence[float], *, context: int,
                         mirror: bool = False, target_calibration: Mapping[str, Any] | None = None,
                         device: str | None = None) -> np.ndarray:
    """A patient's dose (Gy) on its CT grid, predicted on a grid the model knows.

    A hospital CT (often 1 mm across) shows the network anatomy several times larger than the
    OpenKBP grids it learned on: its inputs are resampled to :func:`model_spacing`, the dose
    predicted there and interpolated back (trilinear); a CT already at that scale is predicted
    as it is. Structures are resampled as the fraction of each coarse voxel they cover, kept
    where at least half; a target thinner than that keeps every voxel it touches.

    Parameters
    ----------
    ct_hu, body, oars, targets
        As :func:`~rtgrid.engines.dose_prediction.build_inputs` takes them.
    spacing_mm : Sequence[float]
        The CT's voxel size (column, row, slice) in mm.
    context, mirror, target_calibration, device
        As :func:`predict_dose` takes them (:func:`prediction_options` reads the first three
        from a card).

    Returns
    -------
    np.ndarray
        float32 ``[z, y, x]`` in Gy on the CT grid, zero outside ``body``.
    """
    spacing = tuple(float(s) for s in spacing_mm)
    if model_spacing(spacing) == spacing:
        return predict_dose(model, build_inputs(ct_hu, body, oars, targets, spacing), body, context=context,
                            mirror=mirror, target_calibration=target_calibration, device=device)
    ct, coarse_body, coarse_oars, coarse_targets, coarse_spacing = _on_model_grid(ct_hu, body, oars, targets, spacing)
    dose = predict_dose(model, build_inputs(ct, coarse_body, coarse_oars, coarse_targets, coarse_spacing), coarse_body,
                        context=context, mirror=mirror, target_calibration=target_calibration, device=device)
    return _resample(dose, ct_hu.shape) * body


def _on_model_grid(
    ct_hu: np.ndarray, body: np.ndarray, oars: Mapping[str, np.ndarray], targets: Sequence[tuple[float, np.ndarray]],
    spacing_mm: tuple[float, ...],
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], list[tuple[float, np.ndarray]], tuple[float, ...]]:
    """The inputs of :func:`predict_patient_dose` resampled to :func:`model_spacing` (the grid
    spans the CT's extent, so its voxel size is the nearest that fits a whole number of voxels).

    Returns
    -------
    tuple
        ``(ct_hu, body, oars, targets, spacing_mm)`` on the coarse grid.
    """
    shape = ct_hu.shape
    # Array axes are (slice, row, column); spacings (column, row, slice).
    coarse_shape = tuple(max(1, round(n * old / new))
                         for n, old, new in zip(shape, spacing_mm[::-1], model_spacing(spacing_mm)[::-1]))
    coarse_spacing = tuple(old * n / m for old, n, m in zip(spacing_mm[::-1], shape, coarse_shape))[::-1]

    def fraction(mask: np.ndarray) -> np.ndarray:
        return _resample(mask, coarse_shape)

    def target(mask: np.ndarray) -> np.ndarray:
        covered = fraction(mask)
        kept = covered >= 0.5
        return kept if kept.any() or not mask.any() else covered > 0

    # Only the organs the model has a channel for: a hospital's structure set holds many more.
    organs = {n: fraction(m) >= 0.5 for n, m in oars.items() if n in OAR_CHANNELS}
    return (_resample(ct_hu, coarse_shape), fraction(body) >= 0.5, organs, [(d, target(m)) for d, m in targets],
            coarse_spacing)


def _resample(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Trilinear resampling to ``shape`` over the same extent; averaged over each coarse voxel first
    where the grid coarsens (a 1 mm structure is not lost between 4 mm samples)."""
    a = a.astype(np.float32)
    widths = [max(1, round(n / m)) for n, m in zip(a.shape, shape)]
    if max(widths) > 1:
        a = ndimage.uniform_filter(a, size=widths, mode="nearest")
    # grid_mode: voxels are areas, so both grids span the same extent.
    return ndimage.zoom(a, [m / n for m, n in zip(shape, a.shape)], order=1, grid_mode=True, mode="nearest")
