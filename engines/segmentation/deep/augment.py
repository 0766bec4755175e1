"""Random augmentation of training batches: flips, rotations, scaling, translation, intensity.

One affine transform per sample, applied with ``grid_sample`` (bilinear for images,
nearest for labels). A left-right flip mirrors anatomy, so lateral class pairs
(kidney_left / kidney_right) swap labels; leave ``flip_lr_probability`` at 0 for models whose
classes are lateral without a mirror partner (liver, spleen).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random transforms.

    Attributes
    ----------
    probability : float
        Chance that a sample gets a (rotation, scale, translation) transform at all.
    rotation_deg : float
        Rotation drawn uniformly in ``[-rotation_deg, rotation_deg]``.
    scale_range : (float, float)
        Isotropic zoom factor drawn uniformly in this range.
    translation_mm : float
        Shift drawn uniformly in ``[-translation_mm, translation_mm]`` per axis.
    flip_lr_probability : float
        Chance of a left-right mirror (with lateral pair swapping).
    flip_ap_probability : float
        Chance of an anterior-posterior mirror (rarely anatomical; 0 by default).
    intensity_scale_range : (float, float)
        Contrast factor on the windowed image, drawn uniformly (scanner and contrast-phase spread).
    intensity_shift : float
        Brightness shift drawn in ``[-intensity_shift, intensity_shift]``, in window units
        (0.05 of a 1000 HU window is 50 HU).
    """

    probability: float = 0.8
    rotation_deg: float = 10.0
    scale_range: tuple[float, float] = (0.9, 1.1)
    translation_mm: float = 10.0
    flip_lr_probability: float = 0.0
    flip_ap_probability: float = 0.0
    intensity_scale_range: tuple[float, float] = (1.0, 1.0)
    intensity_shift: float = 0.0


def augment_batch(
    images: torch.Tensor,
    labels: torch.Tensor,
    config: AugmentConfig,
    spacing_mm: tuple[float, float],
    lr_swap: torch.Tensor,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply random transforms to a batch.

    Parameters
    ----------
    images : torch.Tensor
        ``(B, C, H, W)`` float.
    labels : torch.Tensor
        ``(B, H, W)`` int64 class indices.
    config : AugmentConfig
        Transform ranges.
    spacing_mm : (float, float)
        ``(column, row)`` pixel spacing, to express translation in mm.
    lr_swap : torch.Tensor
        ``(n_classes,)`` int64 class permutation applied to left-right flipped samples.
    generator : torch.Generator
        CPU generator that makes the draws reproducible.

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        Transformed images and labels, same shapes and dtypes.
    """
    batch, _, height, width = images.shape
    draws = torch.rand(batch, 6, generator=generator, dtype=torch.float64)
    active = draws[:, 0] < config.probability
    angle = torch.where(active, (2 * draws[:, 1] - 1) * math.radians(config.rotation_deg), torch.zeros(batch, dtype=torch.float64))
    low, high = config.scale_range
    scale = torch.where(active, low + (high - low) * draws[:, 2], torch.ones(batch, dtype=torch.float64))
    # affine_grid works in normalised coordinates: [-1, 1] spans the patch width / height.
    shift_x = torch.where(active, (2 * draws[:, 3] - 1) * config.translation_mm / (width * spacing_mm[0] / 2), torch.zeros(batch, dtype=torch.float64))
    shift_y = torch.where(active, (2 * draws[:, 4] - 1) * config.translation_mm / (height * spacing_mm[1] / 2), torch.zeros(batch, dtype=torch.float64))
    flip_draws = torch.rand(batch, 2, generator=generator, dtype=torch.float64)
    flip_lr = flip_draws[:, 0] < config.flip_lr_probability
    flip_ap = flip_draws[:, 1] < config.flip_ap_probability
    sign_x = torch.where(flip_lr, -1.0, 1.0).double()
    sign_y = torch.where(flip_ap, -1.0, 1.0).double()
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    # The output pixel samples the input at theta @ (x, y, 1): a zoom-in for scale > 1.
    theta = torch.stack([
        torch.stack([cos * sign_x, -sin * sign_y, shift_x], dim=1),
        torch.stack([sin * sign_x, cos * sign_y, shift_y], dim=1),
    ], dim=1).to(images.dtype).to(images.device)
    intensity = torch.rand(batch, 2, generator=generator, dtype=torch.float64)
    low_c, high_c = config.intensity_scale_range
    contrast = (low_c + (high_c - low_c) * intensity[:, 0]).to(images.dtype).to(images.device)
    brightness = ((2 * intensity[:, 1] - 1) * config.intensity_shift).to(images.dtype).to(images.device)
    images = (images * contrast[:, None, None, None] + brightness[:, None, None, None]).clamp(0.0, 1.0)
    changed = active | flip_lr | flip_ap
    if not bool(changed.any()):
        return images, labels
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    labels = F.grid_sample(labels[:, None].to(images.dtype), grid, mode="nearest", padding_mode="zeros", align_corners=False)[:, 0].long()
    if bool(flip_lr.any()):
        swapped = lr_swap.to(labels.device)[labels]
        labels = torch.where(flip_lr.to(labels.device)[:, None, None], swapped, labels)
    return images, labels
