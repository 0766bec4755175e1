"""Warm inference of a 2-D segmentation model over axial slices, in bounded memory.

The grid keeps one :class:`SegmentationRunner` per agent and model, and shards a CT into slice
batches (:func:`plan_slice_batches`); each shard returns a uint8 label slab on the input grid,
the master concatenates them in order and applies :func:`postprocess` once on the whole volume.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rtgrid.engines.errors import EngineError
from rtgrid.engines.imaging.volume import Volume
from rtgrid.engines.segmentation.deep.card import ModelCard
from rtgrid.engines.segmentation.deep.package import load_package
from rtgrid.engines.segmentation.deep.preprocessing import (
    axial_flips,
    model_grid_shape,
    resample_images,
    window_hu,
)


class InferenceInputError(EngineError, ValueError):
    """The slab handed to a runner cannot be segmented as given."""


def plan_slice_batches(nz: int, batch: int) -> list[tuple[int, int]]:
    """Split ``nz`` slices into consecutive ``(start, stop)`` ranges of at most ``batch`` slices.

    Parameters
    ----------
    nz : int
        Number of slices (>= 0).
    batch : int
        Largest number of slices per range (>= 1).

    Returns
    -------
    list of (int, int)
        Half-open ranges covering ``0..nz`` exactly once, in order.
    """
    if nz < 0:
        raise ValueError(f"nz must be >= 0, got {nz}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    return [(start, min(start + batch, nz)) for start in range(0, nz, batch)]


class SegmentationRunner:
    """A loaded model, kept warm and reused for many slabs.

    Parameters
    ----------
    source : str, Path or (torch.nn.Module, ModelCard)
        A package folder (its hash is verified) or an in-memory model with its card.
    device : str
        ``"cpu"`` or ``"cuda"`` (or ``"cuda:N"``).
    batch_slices : int
        Slices per forward pass: bounds memory to about
        ``batch_slices * n_classes * ny * nx * 4`` bytes of logits.
    precision : str
        ``"auto"`` (bf16 autocast on CUDA when supported, else fp16; fp32 on CPU), ``"fp32"``,
        ``"fp16"`` or ``"bf16"`` (autocast dtypes apply on CUDA only).
    """

    def __init__(
        self,
        source: str | Path | tuple[nn.Module, ModelCard],
        device: str = "cpu",
        batch_slices: int = 8,
        precision: str = "auto",
    ) -> None:
        if batch_slices < 1:
            raise ValueError(f"batch_slices must be >= 1, got {batch_slices}")
        if precision not in ("auto", "fp32", "fp16", "bf16"):
            raise ValueError(f"precision must be auto, fp32, fp16 or bf16, got {precision!r}")
        self.device = torch.device(device)
        if isinstance(source, tuple):
            model, card = source
            model = model.to(self.device).eval()
        else:
            model, card = load_package(source, device=str(self.device))
        self.model = model
        self.card = card
        self.batch_slices = batch_slices
        self.autocast_dtype = self._autocast_dtype(precision)

    def _autocast_dtype(self, precision: str) -> torch.dtype | None:
        if self.device.type != "cuda" or precision == "fp32":
            return None
        if precision == "fp16":
            return torch.float16
        if precision == "bf16" or torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16

    @torch.inference_mode()
    def predict_slices(self, hu_slab: np.ndarray, spacing_mm: Sequence[float]) -> np.ndarray:
        """Label a slab of axial slices in the standard orientation.

        Parameters
        ----------
        hu_slab : np.ndarray
            ``(nz, ny, nx)`` HU, rows towards posterior and columns towards patient left
            (DICOM axial as stored); any integer or float dtype.
        spacing_mm : sequence of float
            ``(column, row[, slice])`` spacing in mm; only the in-plane values are used.

        Returns
        -------
        np.ndarray
            ``uint8`` label map of the input shape: class indices of the card, 0 background.

        Raises
        ------
        InferenceInputError
            When the slab is not 3-D or the spacing is not positive.
        """
        if hu_slab.ndim != 3:
            raise InferenceInputError(f"hu_slab must be (nz, ny, nx), got shape {hu_slab.shape}")
        if len(spacing_mm) < 2 or min(float(s) for s in spacing_mm[:2]) <= 0:
            raise InferenceInputError(f"spacing_mm must start with two positive in-plane values, got {list(spacing_mm)}")
        nz, ny, nx = hu_slab.shape
        zooms = self.card.test_time_zooms or (1.0,)
        labels = np.empty((nz, ny, nx), dtype=np.uint8)
        for start, stop in plan_slice_batches(nz, self.batch_slices):
            hu = torch.from_numpy(np.ascontiguousarray(hu_slab[start:stop])).to(self.device)
            windowed = window_hu(hu, self.card.hu_window)[:, None]
            scores = sum(self._scores_on_input_grid(windowed, spacing_mm, zoom, probabilities=len(zooms) > 1)
                         for zoom in zooms)
            labels[start:stop] = scores.argmax(dim=1).to(torch.uint8).cpu().numpy()
        return labels

    def _scores_on_input_grid(self, windowed: torch.Tensor, spacing_mm: Sequence[float], zoom: float,
                              probabilities: bool) -> torch.Tensor:
        """Class scores of windowed slices ``(batch, 1, ny, nx)`` seen at ``zoom`` on the model
        grid, back on their own grid."""
        ny, nx = windowed.shape[-2:]
        zoomed_spacing_mm = [float(s) * zoom for s in spacing_mm[:2]]
        images = resample_images(windowed, model_grid_shape((ny, nx), zoomed_spacing_mm, self.card.input_spacing_mm))
        scores = self._class_scores(images, probabilities)
        # Scores, not labels, go back to the input grid: smoother borders than nearest-neighbour labels.
        return F.interpolate(scores.float(), size=(ny, nx), mode="bilinear", align_corners=False)

    def _class_scores(self, images: torch.Tensor, probabilities: bool = False) -> torch.Tensor:
        """The network's logits (``probabilities``: their softmax), or with the card's
        ``test_time_mirror`` the mean of the class probabilities of the images and of their
        mirror images (columns run towards the patient's left, so a flip of the last axis mirrors
        left and right)."""
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32, enabled=self.autocast_dtype is not None):
            logits = self.model(images)
            if self.card.test_time_mirror is None:
                return logits.float().softmax(dim=1) if probabilities else logits
            mirrored = self.model(images.flip(-1)).flip(-1)[:, self.card.mirror_permutation()]
        return (logits.float().softmax(dim=1) + mirrored.float().softmax(dim=1)) / 2

    def predict_volume(self, volume: Volume) -> Volume:
        """Label a whole CT in any axis-aligned orientation; the label map lies on the CT's grid.

        Raises
        ------
        OrientationError
            When the CT is not an axis-aligned axial stack.
        """
        flip_rows, flip_columns = axial_flips(volume)
        rows = slice(None, None, -1 if flip_rows else 1)
        columns = slice(None, None, -1 if flip_columns else 1)
        labels = self.predict_slices(volume.voxels[:, rows, columns], volume.spacing_mm)
        return volume.with_voxels(np.ascontiguousarray(labels[:, rows, columns]))
