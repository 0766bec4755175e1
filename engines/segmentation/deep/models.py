"""The one place that turns an architecture name and its keyword arguments into a network."""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from rtgrid.engines.errors import EngineError
from rtgrid.engines.segmentation.deep.deeplab import DeepLabV3Plus
from rtgrid.engines.segmentation.deep.unet2d import UNet2D

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "unet2d": UNet2D,
    "deeplabv3plus_mobilenetv2": DeepLabV3Plus,
}


class UnknownArchitectureError(EngineError, ValueError):
    """The architecture name is not one rtgrid can build."""


def build_model(architecture: str, in_channels: int, n_classes: int, **kwargs: Any) -> nn.Module:
    """Build a segmentation network.

    Parameters
    ----------
    architecture : str
        ``"unet2d"`` or ``"deeplabv3plus_mobilenetv2"``.
    in_channels : int
        Image channels (1 for CT).
    n_classes : int
        Output classes, background included.
    **kwargs
        Architecture options (``base_channels``, ``depth`` for the U-Net; ``width_mult``,
        ``aspp_channels``, ``low_level_channels`` for DeepLabv3+).

    Returns
    -------
    torch.nn.Module
        Maps ``(batch, in_channels, H, W)`` to logits ``(batch, n_classes, H, W)``.

    Raises
    ------
    UnknownArchitectureError
        When ``architecture`` is not in :data:`ARCHITECTURES`.
    """
    try:
        factory = ARCHITECTURES[architecture]
    except KeyError:
        raise UnknownArchitectureError(
            f"unknown architecture {architecture!r}; known: {', '.join(sorted(ARCHITECTURES))}"
        ) from None
    return factory(in_channels, n_classes, **kwargs)
