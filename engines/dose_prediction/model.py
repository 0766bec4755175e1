"""A small 2.5D U-Net: a few adjacent axial slices of the inputs in, the middle slice's dose out."""

from __future__ import annotations

import torch
from torch import nn


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class DoseUNet(nn.Module):
    """U-Net on ``context`` stacked slices of ``channels`` inputs each; outputs dose / reference.

    Parameters
    ----------
    channels : int
        Input channels per slice (:data:`rtgrid.engines.dose_prediction.inputs.N_CHANNELS`).
    context : int
        Odd number of adjacent axial slices stacked as channels (the middle one is predicted).
    base : int
        Feature maps at full resolution (doubled at each of ``depth`` downsamplings).
    depth : int
        Downsamplings inside the U-Net.
    pool : int
        The U-Net runs on the slices averaged over ``pool x pool`` voxels, its output upsampled
        back (bilinear): dose is smooth, and it costs ``pool**2`` times less. The in-plane size
        must be divisible by :attr:`multiple` = ``pool * 2**depth``.
    """

    FIRST_CONV_WEIGHT = "down.0.0.weight"
    """The state-dict key of the first convolution's weights, ``[base, context * channels, 3, 3]``."""

    def __init__(self, channels: int, context: int = 5, base: int = 16, depth: int = 4, pool: int = 1) -> None:
        super().__init__()
        self.pool = pool
        self.multiple = pool * 2**depth
        widths = [base * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList([_block(channels * context, widths[0])] + [_block(widths[i], widths[i + 1]) for i in range(depth)])
        self.up = nn.ModuleList([nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in reversed(range(depth))])
        self.merge = nn.ModuleList([_block(2 * widths[i], widths[i]) for i in reversed(range(depth))])
        self.head = nn.Conv2d(widths[0], 1, 1)

    @property
    def in_channels(self) -> int:
        """Input channels the network takes: ``context * channels``."""
        return self.down[0][0].in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        if self.pool > 1:
            x = nn.functional.avg_pool2d(x, self.pool)
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else nn.functional.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for up, merge in zip(self.up, self.merge):
            x = merge(torch.cat([up(x), skips.pop()], dim=1))
        x = self.head(x)
        if self.pool > 1:
            x = nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
        # Dose is non-negative; softplus keeps gradients alive near zero unlike a ReLU.
        return nn.functional.softplus(x)[:, 0]
