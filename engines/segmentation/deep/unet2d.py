"""A 2-D U-Net (Ronneberger et al. 2015) for axial CT slices.

Batch normalisation (instance normalisation's backward pass is about 10x slower on CPU) and
leaky ReLU as in nnU-Net.
Inputs of any height and width are padded to a multiple of ``2**depth`` and the logits cropped back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _DoubleConv(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(0.01, inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(0.01, inplace=True),
        )


class UNet2D(nn.Module):
    """Encoder-decoder with skip connections.

    Parameters
    ----------
    in_channels : int
        Image channels (1 for CT).
    n_classes : int
        Output classes, background included.
    base_channels : int
        Feature maps at full resolution; doubled at each of the ``depth`` downsamplings.
    depth : int
        Number of 2x downsamplings.
    """

    def __init__(self, in_channels: int, n_classes: int, base_channels: int = 16, depth: int = 4) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        widths = [base_channels * 2**level for level in range(depth + 1)]
        self.depth = depth
        self.encoders = nn.ModuleList([_DoubleConv(in_channels, widths[0])])
        self.encoders.extend(_DoubleConv(widths[level - 1], widths[level]) for level in range(1, depth + 1))
        self.upsamplers = nn.ModuleList(
            nn.ConvTranspose2d(widths[level], widths[level - 1], 2, stride=2) for level in range(depth, 0, -1)
        )
        self.decoders = nn.ModuleList(
            _DoubleConv(2 * widths[level - 1], widths[level - 1]) for level in range(depth, 0, -1)
        )
        self.classifier = nn.Conv2d(widths[0], n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        multiple = 2**self.depth
        pad_h, pad_w = (-height) % multiple, (-width) % multiple
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        skips = []
        for level, encoder in enumerate(self.encoders):
            x = encoder(x if level == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for upsample, decoder in zip(self.upsamplers, self.decoders):
            x = decoder(torch.cat([skips.pop(), upsample(x)], dim=1))
        return self.classifier(x)[..., :height, :width]
