"""Deep-learning auto-segmentation: 2-D U-Net and DeepLabv3+ (MobileNetV2), training, packages, inference."""

from rtgrid.engines.segmentation.deep.card import CardLabel, ModelCard, ModelCardError
from rtgrid.engines.segmentation.deep.inference import SegmentationRunner, plan_slice_batches
from rtgrid.engines.segmentation.deep.models import build_model
from rtgrid.engines.segmentation.deep.package import ModelPackageError, load_package, save_package
from rtgrid.engines.segmentation.deep.postprocess import postprocess
from rtgrid.engines.segmentation.deep.training import ClassSpec, TrainCase, TrainConfig, TrainResult, train_segmentation

__all__ = [
    "CardLabel", "ClassSpec", "ModelCard", "ModelCardError", "ModelPackageError", "SegmentationRunner",
    "TrainCase", "TrainConfig", "TrainResult", "build_model", "load_package", "plan_slice_batches",
    "postprocess", "save_package", "train_segmentation",
]
