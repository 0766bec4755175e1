"""Predict a patient's dose on its CT grid, slice by slice with the model's slice context."""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from .inputs import REFERENCE_DOSE_GY, DoseInputError, mirror_inputs
from .model import DoseUNet


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


@torch.no_grad()
def predict_dose(model: DoseUNet, inputs: np.ndarray, body: np.ndarray, *, context: int, mirror: bool = False,
                 batch: int = 16, device: str | None = None) -> np.ndarray:
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
    takes = model.down[0][0].in_channels
    if inputs.shape[0] * context != takes:
        raise DoseInputError(f"the model takes {takes // context} input channels per slice, the inputs have "
                             f"{inputs.shape[0]}: a dose model package from another release of the inputs")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device).eval()
    dose = _predict(model, inputs, body, context, batch, device)
    if mirror:
        dose = 0.5 * (dose + _predict(model, mirror_inputs(inputs), body[..., ::-1], context, batch, device)[..., ::-1])
    return dose


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
