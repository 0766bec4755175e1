"""rtgrid's first abdominal organ model, trained reproducibly on the data at hand.

Training data: the TotalSegmentator example CT (``example_ct_sm.nii.gz``, 30 slices at 3 mm, with
``example_seg.nii.gz``) split into a training block and a validation block of slices, plus the
digital thorax phantom (its spinal cord; the phantom contains none of the other organs).
Held-out test: the *other* patient, the real DICOM series ``ct_dicom`` with
``example_seg_dicom.nii.gz``, never seen in training or model selection. Its scores are stored in
the card under ``validation_metrics["held_out"]``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from rtgrid.engines.imaging.volume import Volume
from rtgrid.engines.segmentation.deep.augment import AugmentConfig
from rtgrid.engines.segmentation.deep.inference import SegmentationRunner
from rtgrid.engines.segmentation.deep.package import load_package, save_package
from rtgrid.engines.segmentation.deep.postprocess import postprocess
from rtgrid.engines.segmentation.deep.preprocessing import to_standard_axial
from rtgrid.engines.segmentation.deep.training import ClassSpec, TrainCase, TrainConfig, TrainResult, train_segmentation
from rtgrid.engines.segmentation.metrics import CaseMetrics, compare_label_maps

FIRST_MODEL_CONFIG = TrainConfig(
    name="rtgrid-abdomen-2d",
    version="0.1.0",
    classes=(
        ClassSpec("liver", "Liver", ("liver",)),
        ClassSpec("spleen", "Spleen", ("spleen",)),
        ClassSpec("stomach", "Stomach", ("stomach",)),
        ClassSpec("aorta", "Aorta", ("aorta",)),
        ClassSpec("spinal_cord", "SpinalCord", ("spinal_cord", "SpinalCord")),
    ),
    architecture="unet2d",
    architecture_kwargs={"base_channels": 16, "depth": 4},
    input_spacing_mm=(2.0, 2.0),
    hu_window=(-400.0, 600.0),
    patch_size=(96, 96),
    batch_size=8,
    iterations_per_epoch=30,
    max_epochs=14,
    learning_rate=2e-3,
    plateau_patience=2,
    early_stopping_patience=5,
    foreground_fraction=0.6,
    # No left-right flips: liver and spleen are lateral organs without a mirror partner.
    augment=AugmentConfig(
        probability=0.8, rotation_deg=12.0, scale_range=(0.85, 1.15), translation_mm=15.0,
        intensity_scale_range=(0.9, 1.1), intensity_shift=0.08,
    ),
    validation_case_ids=("totalseg-example-ct-sm:val",),
    seed=0,
    licence="Apache-2.0 (weights); training data: TotalSegmentator example (CC-BY-4.0) and the rtgrid phantom",
)
VALIDATION_SLICES = 6  # last slices of example_ct_sm, kept out of training for model selection


def read_image_volume(path: str | Path) -> Volume:
    """A NIfTI file or a DICOM series folder as a :class:`Volume` (through SimpleITK)."""
    path = Path(path)
    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        files = reader.GetGDCMSeriesFileNames(str(path))
        if not files:
            raise FileNotFoundError(f"no DICOM series in {path}")
        reader.SetFileNames(files)
        image = reader.Execute()
    else:
        image = sitk.ReadImage(str(path))
    return Volume(
        sitk.GetArrayFromImage(image),
        np.array(image.GetOrigin()),
        np.array(image.GetSpacing()),
        np.array(image.GetDirection()).reshape(3, 3),
    )


def _slab(volume: Volume, start: int, stop: int) -> Volume:
    origin = volume.index_to_lps(np.array([0.0, 0.0, float(start)]))
    return Volume(volume.voxels[start:stop], origin, volume.spacing_mm, volume.direction)


def _label_names(data_dir: Path) -> dict[int, str]:
    return {int(k): v for k, v in json.loads((data_dir / "labels_total_v2.json").read_text()).items()}


def first_model_cases(data_dir: str | Path, with_phantom: bool = True) -> list[TrainCase]:
    """Training and validation cases of the first model (the held-out patient is not among them)."""
    data_dir = Path(data_dir)
    names = _label_names(data_dir)
    ct = read_image_volume(data_dir / "example_ct_sm.nii.gz")
    seg = read_image_volume(data_dir / "example_seg.nii.gz")
    split = ct.shape[0] - VALIDATION_SLICES
    cases = [
        TrainCase("totalseg-example-ct-sm:train", _slab(ct, 0, split), _slab(seg, 0, split), names),
        TrainCase("totalseg-example-ct-sm:val", _slab(ct, split, ct.shape[0]), _slab(seg, split, ct.shape[0]), names),
    ]
    if with_phantom:
        from rtgrid.engines.phantom.digital_patient import make_phantom

        phantom = make_phantom(shape=(12, 192, 192), spacing_mm=(2.0, 2.0, 5.0), seed=1)
        cases.append(TrainCase("rtgrid-phantom-seed1", phantom.ct, phantom.labels))
    return cases


def evaluate_held_out(runner: SegmentationRunner, data_dir: str | Path) -> CaseMetrics:
    """Segment the held-out DICOM patient, post-process, and score against its reference."""
    data_dir = Path(data_dir)
    ct = to_standard_axial(read_image_volume(data_dir / "ct_dicom"))
    reference = to_standard_axial(read_image_volume(data_dir / "example_seg_dicom.nii.gz"))
    if not reference.same_grid(ct):
        raise ValueError(f"{data_dir / 'example_seg_dicom.nii.gz'} does not lie on the grid of {data_dir / 'ct_dicom'}")
    card = runner.card
    predicted = postprocess(runner.predict_slices(ct.voxels, ct.spacing_mm), card)
    by_name = {name: value for value, name in _label_names(data_dir).items()}
    mapped = np.zeros(reference.shape, dtype=np.uint8)
    for spec, label in zip(FIRST_MODEL_CONFIG.classes, card.labels):
        for source in spec.sources:
            if source in by_name:
                mapped[reference.voxels == by_name[source]] = label.index
    return compare_label_maps(mapped, predicted, ct.spacing_mm, {l.index: l.name for l in card.labels}, "totalseg-example-ct-dicom")


@dataclass(frozen=True)
class FirstModelResult:
    """The trained package and its honest scores."""

    training: TrainResult
    held_out: CaseMetrics
    package_dir: Path
    package_hash: str


def train_first_model(out_dir: str | Path, data_dir: str | Path, *, device: str = "cpu", resume: bool = True) -> FirstModelResult:
    """Train the first model, test it on the held-out patient, and package it with both scores.

    Parameters
    ----------
    out_dir : str or Path
        Receives the checkpoint, ``package/`` and ``held_out_metrics.json``.
    data_dir : str or Path
        The ``totalseg-example`` folder (``example_ct_sm.nii.gz``, ``example_seg.nii.gz``,
        ``ct_dicom/``, ``example_seg_dicom.nii.gz``, ``labels_total_v2.json``).
    device : str
        ``"cpu"`` or ``"cuda"``.
    resume : bool
        Continue an interrupted run from its checkpoint.

    Returns
    -------
    FirstModelResult
    """
    out_dir = Path(out_dir)
    training = train_segmentation(first_model_cases(data_dir), FIRST_MODEL_CONFIG, out_dir, resume=resume, device=device)
    runner = SegmentationRunner(training.package_dir, device=device)
    held_out = evaluate_held_out(runner, data_dir)
    (out_dir / "held_out_metrics.json").write_text(held_out.to_json())
    model, card = load_package(training.package_dir)
    metrics = dict(card.validation_metrics) | {"held_out": held_out.to_dict()}
    content_hash = save_package(training.package_dir, model, dataclasses.replace(card, validation_metrics=metrics))
    return FirstModelResult(training, held_out, training.package_dir, content_hash)
