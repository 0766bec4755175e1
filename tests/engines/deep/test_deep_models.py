import pytest
import torch

from rtgrid.engines.segmentation.deep.deeplab import DeepLabV3Plus, InvertedResidual
from rtgrid.engines.segmentation.deep.models import UnknownArchitectureError, build_model

torch.set_num_threads(2)


@pytest.mark.parametrize("architecture", ["unet2d", "deeplabv3plus_mobilenetv2"])
@pytest.mark.parametrize("size", [(64, 64), (50, 77)])
def test_logits_match_input_size_and_classes(architecture, size):
    kwargs = {"base_channels": 4, "depth": 3} if architecture == "unet2d" else {"width_mult": 0.35, "aspp_channels": 16, "low_level_channels": 8}
    model = build_model(architecture, 1, 5, **kwargs).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 1, *size))
    assert logits.shape == (2, 5, *size)


def test_deeplab_runs_at_output_stride_16_with_atrous_last_blocks():
    model = DeepLabV3Plus(1, 3).eval()
    with torch.no_grad():
        low, high = model.backbone(torch.randn(1, 1, 128, 160))
    assert low.shape[-2:] == (32, 40)  # stride 4 low-level features (24 channels)
    assert low.shape[1] == 24
    assert high.shape[-2:] == (8, 10)  # output stride 16, not 32
    assert high.shape[1] == 320
    dilations = [
        block.block[-3][0].dilation[0]
        for stage in model.backbone.stages
        for block in stage
        if isinstance(block, InvertedResidual)
    ]
    # MobileNetV2 has 17 inverted residual blocks; the 160- and 320-channel ones (4) are atrous.
    assert len(dilations) == 17
    assert dilations[-4:] == [2, 2, 2, 2] and set(dilations[:-4]) == {1}


def test_deeplab_aspp_has_three_atrous_rates_and_image_pooling():
    model = DeepLabV3Plus(1, 3)
    rates = [branch[0].dilation[0] for branch in model.aspp.branches]
    assert rates == [1, 6, 12, 18]
    assert isinstance(model.aspp.image_pool[0], torch.nn.AdaptiveAvgPool2d)
    assert model.reduce_low_level[0].kernel_size == (1, 1) and model.reduce_low_level[0].out_channels == 48
    assert [m[0].kernel_size for m in model.refine] == [(3, 3), (3, 3)]


def test_unknown_architecture_is_named():
    with pytest.raises(UnknownArchitectureError, match="unet3d"):
        build_model("unet3d", 1, 2)
