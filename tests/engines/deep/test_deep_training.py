import dataclasses

import numpy as np
import pytest
import torch

from rtgrid.engines.imaging.volume import Volume
from rtgrid.engines.segmentation.deep.augment import AugmentConfig, augment_batch
from rtgrid.engines.segmentation.deep.inference import SegmentationRunner
from rtgrid.engines.segmentation.deep.package import load_package
from rtgrid.engines.segmentation.deep.training import (
    ClassSpec,
    TrainCase,
    TrainConfig,
    TrainingDataError,
    TrainingResumeError,
    prepare_case,
    train_segmentation,
)
from rtgrid.engines.segmentation.metrics import compare_masks

try:
    from ._synthetic import ellipse_ct
except ImportError:  # importlib import mode: load the helper beside this file
    import importlib.util
    import pathlib

    _spec = importlib.util.spec_from_file_location("_synthetic", pathlib.Path(__file__).with_name("_synthetic.py"))
    _module = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_module)
    ellipse_ct = _module.ellipse_ct

torch.set_num_threads(2)

NAMES = {1: "liver", 2: "bone"}
CONFIG = TrainConfig(
    name="tiny", version="0",
    classes=(ClassSpec("organ", "Organ", ("liver",)), ClassSpec("bone", "Bone", (2,), largest_component=False)),
    architecture_kwargs={"base_channels": 4, "depth": 2},
    input_spacing_mm=(2.0, 2.0), hu_window=(-200.0, 800.0), patch_size=(32, 32), batch_size=4,
    iterations_per_epoch=15, max_epochs=6, learning_rate=3e-3, early_stopping_patience=6,
    augment=AugmentConfig(probability=0.5, rotation_deg=8.0, translation_mm=4.0),
)


def _cases(n=3):
    return [TrainCase(f"case{seed}", *ellipse_ct(seed), NAMES) for seed in range(n)]


def test_training_learns_and_packages_the_best_epoch(tmp_path):
    result = train_segmentation(_cases(), dataclasses.replace(CONFIG, test_time_zooms=(0.9, 1.0, 1.1)), tmp_path)
    assert result.validation_metrics["mean_dsc"] == result.best_score > 0.6
    assert 1 <= result.best_epoch <= result.epochs_completed
    # The package, loaded through the runner, segments an unseen case (seed 7), at the zooms the
    # configuration chose for inference.
    ct, reference = ellipse_ct(7)
    runner = SegmentationRunner(result.package_dir)
    assert runner.card.validation_metrics == result.validation_metrics
    assert runner.card.test_time_zooms == (0.9, 1.0, 1.1) and runner.card.test_time_mirror is None
    labels = runner.predict_slices(ct.voxels, ct.spacing_mm)
    assert compare_masks(reference.voxels == 2, labels == 2, ct.spacing_mm).dsc > 0.6


def test_resume_reproduces_an_uninterrupted_run(tmp_path):
    config = dataclasses.replace(CONFIG, iterations_per_epoch=3, max_epochs=2)
    straight = train_segmentation(_cases(2), config, tmp_path / "straight")
    first = train_segmentation(_cases(2), config, tmp_path / "resumed", max_epochs_this_run=1)
    assert first.epochs_completed == 1
    resumed = train_segmentation(_cases(2), config, tmp_path / "resumed")
    assert resumed.epochs_completed == 2
    assert resumed.package_hash == straight.package_hash
    with pytest.raises(TrainingResumeError, match="another configuration"):
        train_segmentation(_cases(2), dataclasses.replace(config, learning_rate=1e-2), tmp_path / "resumed")


def test_label_map_masks_and_flipped_grids_prepare_identically():
    ct, labels = ellipse_ct(0)
    from_map = prepare_case(TrainCase("a", ct, labels, NAMES), CONFIG)
    masks = {"liver": labels.voxels == 1, "anything": labels.voxels == 2}
    by_mask_config = dataclasses.replace(CONFIG, classes=(CONFIG.classes[0], ClassSpec("bone", "Bone", ("anything",))))
    from_masks = prepare_case(TrainCase("b", ct, masks), by_mask_config)
    assert torch.equal(from_map.labels, from_masks.labels)
    # The same patient stored with rows and columns reversed (as NIfTI through ITK often is).
    flip = np.diag([-1.0, -1.0, 1.0])
    nx, ny = ct.shape[2], ct.shape[1]
    origin = ct.index_to_lps(np.array([nx - 1.0, ny - 1.0, 0.0]))
    flipped_ct = Volume(np.ascontiguousarray(ct.voxels[:, ::-1, ::-1]), origin, ct.spacing_mm, flip)
    flipped_labels = Volume(np.ascontiguousarray(labels.voxels[:, ::-1, ::-1]), origin, ct.spacing_mm, flip)
    from_flipped = prepare_case(TrainCase("c", flipped_ct, flipped_labels, NAMES), CONFIG)
    assert torch.equal(from_flipped.labels, from_map.labels)
    assert torch.allclose(from_flipped.images, from_map.images)
    shifted = Volume(labels.voxels, (5.0, 0.0, 0.0), labels.spacing_mm)
    with pytest.raises(TrainingDataError, match="differs from the CT grid"):
        prepare_case(TrainCase("d", ct, shifted, NAMES), CONFIG)


def test_left_right_flip_swaps_lateral_classes():
    images = torch.zeros(2, 1, 8, 10)
    labels = torch.zeros(2, 8, 10, dtype=torch.long)
    images[:, :, 2:5, 1:3] = 1.0
    labels[:, 2:5, 1:3] = 1  # "kidney_right" at low column index
    config = AugmentConfig(probability=0.0, flip_lr_probability=1.0)
    swap = torch.tensor([0, 2, 1])
    out_images, out_labels = augment_batch(images, labels, config, (1.0, 1.0), swap, torch.Generator().manual_seed(0))
    assert torch.equal(out_labels, torch.flip(labels, dims=[2]).where(labels.flip(dims=[2]) == 0, 2))
    assert torch.allclose(out_images, torch.flip(images, dims=[3]), atol=1e-5)


def test_class_sampling_centres_patches_on_every_organ_equally():
    # The bone is a few pixels against a large organ: pixel sampling almost never centres on it.
    from rtgrid.engines.segmentation.deep.training import _sample_batch, class_slice_index

    config = dataclasses.replace(CONFIG, foreground_fraction=1.0, foreground_sampling="class", batch_size=2)
    prepared = [prepare_case(case, config) for case in _cases(2)]
    class_slices = class_slice_index(prepared, 2)
    for k, pairs in enumerate(class_slices, start=1):
        assert len(pairs) and all(bool((prepared[c].labels[z] == k).any()) for c, z in pairs)
    slice_index = np.array([(c, z) for c, p in enumerate(prepared) for z in range(p.images.shape[0])])
    rng = np.random.default_rng(0)
    centres = []
    for _ in range(200):
        _, labels, _ = _sample_batch(prepared, config, rng, slice_index, class_slices)
        centres += labels[:, 16, 16].tolist()
    counts = np.bincount(centres, minlength=3)
    assert counts[0] == 0 and abs(counts[1] - counts[2]) < 0.15 * len(centres)


def test_poly_schedule_decays_to_zero_and_resumes_identically(tmp_path):
    config = dataclasses.replace(CONFIG, iterations_per_epoch=3, max_epochs=2, lr_schedule="poly", foreground_sampling="class")
    straight = train_segmentation(_cases(2), config, tmp_path / "straight")
    assert straight.history[-1]["learning_rate"] == 0.0 < straight.history[0]["learning_rate"] < config.learning_rate
    train_segmentation(_cases(2), config, tmp_path / "resumed", max_epochs_this_run=1)
    resumed = train_segmentation(_cases(2), config, tmp_path / "resumed")
    assert resumed.package_hash == straight.package_hash
    with pytest.raises(TrainingDataError, match="lr_schedule"):
        dataclasses.replace(config, lr_schedule="cosine")


def test_a_warm_restart_starts_from_the_packaged_weights(tmp_path):
    first = train_segmentation(_cases(2), dataclasses.replace(CONFIG, iterations_per_epoch=3, max_epochs=1), tmp_path / "a")
    config = dataclasses.replace(CONFIG, iterations_per_epoch=3, max_epochs=1, initial_package=str(first.package_dir))
    restart = train_segmentation(_cases(2), config, tmp_path / "b")
    # It starts where the first ended: better than a start from scratch with the same budget.
    cold = train_segmentation(_cases(2), dataclasses.replace(config, initial_package=""), tmp_path / "c")
    assert restart.history[0]["train_loss"] < cold.history[0]["train_loss"]
    # The card says where its training started.
    _, card = load_package(restart.package_dir)
    assert card.training_data["initial_package"]["sha256"] == first.package_hash
    assert "initial_package" not in load_package(cold.package_dir)[1].training_data
    other = dataclasses.replace(config, architecture_kwargs={"base_channels": 8, "depth": 2})
    with pytest.raises(TrainingDataError, match="initial_package"):
        train_segmentation(_cases(2), other, tmp_path / "d")
