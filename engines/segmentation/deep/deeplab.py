"""DeepLabv3+ (Chen et al. 2018) with a MobileNetV2 backbone (Sandler et al. 2018).

The backbone runs at output stride 16: the last stride-2 stage (160 channels) keeps stride 1 and
its blocks, and those after it, use atrous (dilated) 3x3 depthwise convolutions of rate 2.
The decoder upsamples the ASPP features 4x (bilinear), fuses them with 1x1-reduced low-level
features from the stride-4 stage, refines with 3x3 convolutions and upsamples to the input size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# (expansion t, output channels c, repeats n, stride s) of MobileNetV2, Table 2 of the paper.
_MOBILENET_V2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
_LOW_LEVEL_STAGE = 1  # the 24-channel stage, at stride 4


def _make_divisible(value: float, divisor: int = 8) -> int:
    """Channel counts rounded as in the reference MobileNetV2 (never more than 10% down)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _conv_bn_relu6(in_channels: int, out_channels: int, kernel: int, stride: int = 1, dilation: int = 1, groups: int = 1) -> nn.Sequential:
    padding = dilation * (kernel - 1) // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride, padding, dilation=dilation, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1x1 expansion, 3x3 depthwise (possibly atrous), linear 1x1 projection; residual when shapes agree."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int, dilation: int = 1) -> None:
        super().__init__()
        hidden = in_channels * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(_conv_bn_relu6(in_channels, hidden, 1))
        layers += [
            _conv_bn_relu6(hidden, hidden, 3, stride=stride, dilation=dilation, groups=hidden),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.use_residual else self.block(x)


class MobileNetV2Backbone(nn.Module):
    """MobileNetV2 feature extractor at output stride 16; returns (low-level, high-level) features."""

    def __init__(self, in_channels: int, width_mult: float = 1.0) -> None:
        super().__init__()
        channels = _make_divisible(32 * width_mult)
        self.stem = _conv_bn_relu6(in_channels, channels, 3, stride=2)
        stages = []
        current_stride, dilation = 2, 1
        for t, c, n, s in _MOBILENET_V2_STAGES:
            out_channels = _make_divisible(c * width_mult)
            if current_stride * s > 16:
                # Output stride 16: trade this stage's stride for atrous rate.
                first_stride, dilation = 1, dilation * s
            else:
                first_stride, current_stride = s, current_stride * s
            blocks = []
            for repeat in range(n):
                blocks.append(InvertedResidual(channels, out_channels, first_stride if repeat == 0 else 1, t, dilation))
                channels = out_channels
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.low_level_channels = _make_divisible(_MOBILENET_V2_STAGES[_LOW_LEVEL_STAGE][1] * width_mult)
        self.high_level_channels = channels

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.stem(x)
        low_level = x
        for index, stage in enumerate(self.stages):
            x = stage(x)
            if index == _LOW_LEVEL_STAGE:
                low_level = x
        return low_level, x


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, three atrous 3x3 branches and image-level pooling."""

    def __init__(self, in_channels: int, out_channels: int, rates: tuple[int, ...] = (6, 12, 18)) -> None:
        super().__init__()
        self.branches = nn.ModuleList([_conv_bn_relu(in_channels, out_channels, 1)])
        self.branches.extend(_conv_bn_relu(in_channels, out_channels, 3, rate) for rate in rates)
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), _conv_bn_relu(in_channels, out_channels, 1))
        self.project = _conv_bn_relu(out_channels * (len(rates) + 2), out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.interpolate(self.image_pool(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.project(torch.cat([branch(x) for branch in self.branches] + [pooled], dim=1))


def _conv_bn_relu(in_channels: int, out_channels: int, kernel: int, dilation: int = 1) -> nn.Sequential:
    padding = dilation * (kernel - 1) // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class DeepLabV3Plus(nn.Module):
    """DeepLabv3+ with MobileNetV2 at output stride 16.

    Parameters
    ----------
    in_channels : int
        Image channels (1 for CT).
    n_classes : int
        Output classes, background included.
    width_mult : float
        MobileNetV2 width multiplier.
    aspp_channels : int
        Channels of ASPP and of the decoder's refinement (256 in the paper).
    low_level_channels : int
        Channels after the 1x1 reduction of the low-level features (48 in the paper).
    """

    def __init__(
        self,
        in_channels: int,
        n_classes: int,
        width_mult: float = 1.0,
        aspp_channels: int = 256,
        low_level_channels: int = 48,
    ) -> None:
        super().__init__()
        self.backbone = MobileNetV2Backbone(in_channels, width_mult)
        self.aspp = ASPP(self.backbone.high_level_channels, aspp_channels)
        self.reduce_low_level = _conv_bn_relu(self.backbone.low_level_channels, low_level_channels, 1)
        self.refine = nn.Sequential(
            _conv_bn_relu(aspp_channels + low_level_channels, aspp_channels, 3),
            _conv_bn_relu(aspp_channels, aspp_channels, 3),
        )
        self.classifier = nn.Conv2d(aspp_channels, n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        low_level, high_level = self.backbone(x)
        low_level = self.reduce_low_level(low_level)
        # 4x bilinear upsampling of the stride-16 features to the stride-4 grid (exact size for odd inputs).
        high_level = F.interpolate(self.aspp(high_level), size=low_level.shape[-2:], mode="bilinear", align_corners=False)
        logits = self.classifier(self.refine(torch.cat([high_level, low_level], dim=1)))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
