import dataclasses
import json

import numpy as np
import pytest
import torch
from torch import nn

from rtgrid.engines.imaging.volume import Volume
from rtgrid.engines.segmentation.deep.card import CardLabel, ModelCard, ModelCardError
from rtgrid.engines.segmentation.deep.inference import SegmentationRunner, plan_slice_batches
from rtgrid.engines.segmentation.deep.models import build_model
from rtgrid.engines.segmentation.deep.package import ModelPackageError, load_package, save_package
from rtgrid.engines.segmentation.deep.postprocess import postprocess
from rtgrid.engines.segmentation.metrics import compare_masks

torch.set_num_threads(2)


def _card(**changes):
    card = ModelCard(
        name="test-model", version="1.0", architecture="unet2d", architecture_kwargs={"base_channels": 4, "depth": 2},
        labels=(CardLabel(1, "liver", "Liver"), CardLabel(2, "cord", "SpinalCord", "ORGAN", largest_component=False)),
        input_spacing_mm=(2.0, 2.0), hu_window=(-1000.0, 1000.0), in_channels=1,
        training_data={"cases": 0}, validation_metrics={"mean_dsc": 0.5}, licence="test",
    )
    return dataclasses.replace(card, **changes)


def test_package_round_trip_and_tamper_detection(tmp_path):
    torch.manual_seed(3)
    card = _card()
    model = build_model(card.architecture, 1, card.n_classes, **card.architecture_kwargs).eval()
    digest = save_package(tmp_path / "pkg", model, card)
    loaded, loaded_card = load_package(tmp_path / "pkg")
    assert loaded_card == card
    x = torch.randn(2, 1, 40, 36)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert save_package(tmp_path / "again", model, card) == digest  # content-addressed
    card_path = tmp_path / "pkg" / "card.json"
    data = json.loads(card_path.read_text())
    data["licence"] = "changed"
    card_path.write_text(json.dumps(data))
    with pytest.raises(ModelPackageError, match="content hash"):
        load_package(tmp_path / "pkg")


def test_missing_card_field_is_named():
    data = json.loads(_card().to_json())
    del data["hu_window"]
    with pytest.raises(ModelCardError, match="hu_window"):
        ModelCard.from_dict(data)
    data = json.loads(_card().to_json())
    del data["labels"][1]["rtstruct_name"]
    with pytest.raises(ModelCardError, match=r"labels\[1\] is missing rtstruct_name"):
        ModelCard.from_dict(data)


def test_plan_slice_batches_covers_every_slice_once():
    assert plan_slice_batches(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert plan_slice_batches(0, 4) == []
    covered = [z for start, stop in plan_slice_batches(101, 7) for z in range(start, stop)]
    assert covered == list(range(101))


class _ThresholdNet(nn.Module):
    """Stand-in network with a known answer: class 1 where the windowed image exceeds 0.5 (HU > 0)."""

    def forward(self, x):
        return torch.cat([0.5 - x, x - 0.5, torch.full_like(x, -1.0)], dim=1) * 20


def _disc_ct(spacing=(0.8, 0.8, 2.0)):
    nz, ny, nx = 5, 150, 130
    y, x = np.mgrid[:ny, :nx]
    disc = ((x - 61.3) * spacing[0]) ** 2 + ((y - 80.6) * spacing[1]) ** 2 <= 30.0**2
    hu = np.where(disc, 500, -500).astype(np.int16)
    return np.repeat(hu[None], nz, axis=0), np.repeat(disc[None], nz, axis=0)


def test_runner_resamples_to_model_spacing_and_back_without_shift():
    hu, disc = _disc_ct()
    runner = SegmentationRunner((_ThresholdNet(), _card()), batch_slices=2)
    labels = runner.predict_slices(hu, (0.8, 0.8, 2.0))
    assert labels.dtype == np.uint8 and labels.shape == hu.shape
    assert compare_masks(disc, labels == 1, (0.8, 0.8, 2.0)).dsc > 0.98
    # A half-pixel convention error would move the centroid by ~1 model pixel (2.5 input pixels).
    centroid = np.argwhere(labels[0] == 1).mean(axis=0)
    assert np.allclose(centroid, (80.6, 61.3), atol=0.3)
    assert np.array_equal(SegmentationRunner((_ThresholdNet(), _card()), batch_slices=5).predict_slices(hu, (0.8, 0.8)), labels)


def test_predict_volume_handles_flipped_axes():
    hu, disc = _disc_ct()
    hu[:, :, :20] = 800  # an asymmetric feature so flips matter
    standard = Volume(hu, (0, 0, 0), (0.8, 0.8, 2.0))
    flipped = Volume(np.ascontiguousarray(hu[:, ::-1, ::-1]), (0, 0, 0), (0.8, 0.8, 2.0), np.diag([-1.0, -1.0, 1.0]))
    runner = SegmentationRunner((_ThresholdNet(), _card()))
    assert np.array_equal(runner.predict_volume(flipped).voxels, runner.predict_volume(standard).voxels[:, ::-1, ::-1])


def test_postprocess_follows_card_flags():
    labels = np.zeros((6, 40, 40), np.uint8)
    labels[1:5, 5:25, 5:25] = 1
    labels[2:4, 12:16, 12:16] = 0  # a hole in the liver
    labels[2, 35:38, 35:38] = 1  # a detached liver speck
    labels[1:5, 30:33, 2:5] = 2  # cord: two components kept (flag off)
    labels[1:5, 30:33, 10:13] = 2
    labels[3, 26, 26] = 2  # single-voxel speck removed by smoothing
    out = postprocess(labels, _card())
    assert (out[2:4, 12:16, 12:16] == 1).all()
    assert not (out[2, 35:38, 35:38] == 1).any()
    # Both cord components survive (smoothing only trims the squares' corners).
    assert (out[1:5, 30:33, 2:5] == 2).sum() >= 20 and (out[1:5, 30:33, 10:13] == 2).sum() >= 20
    assert out[3, 26, 26] == 0
    kept = postprocess(labels, _card(fill_holes=False, smoothing_radius_vox=0))
    assert (kept[2:4, 12:16, 12:16] == 0).all()


def _lateral_card(**changes):
    labels = (CardLabel(1, "parotid_r", "Parotid_R"), CardLabel(2, "cord", "SpinalCord"), CardLabel(3, "parotid_l", "Parotid_L"))
    return _card(labels=labels, **changes)


def test_test_time_mirror_pairs_survive_the_package_and_bad_pairs_are_named(tmp_path):
    card = _lateral_card(test_time_mirror=(("parotid_r", "parotid_l"),))
    assert card.mirror_permutation() == [0, 3, 2, 1]  # background and the cord stay, the parotids trade places
    model = build_model(card.architecture, 1, card.n_classes, **card.architecture_kwargs).eval()
    save_package(tmp_path / "pkg", model, card)
    assert load_package(tmp_path / "pkg")[1] == card
    for pairs in ((("parotid_r", "kidney_l"),), (("parotid_r", "parotid_l"), ("parotid_l", "cord"))):
        with pytest.raises(ModelCardError, match="test_time_mirror"):
            _lateral_card(test_time_mirror=pairs)


@pytest.mark.parametrize("mirror", [True, False])
def test_a_mirrored_patient_gets_the_mirrored_contours_with_test_time_mirror(mirror):
    # Averaged with its mirror image, the prediction of a mirrored CT is the mirrored prediction
    # with left and right classes swapped, exactly; an untrained network alone is not symmetric.
    torch.manual_seed(5)
    card = _lateral_card(test_time_mirror=(("parotid_r", "parotid_l"),) if mirror else None)
    model = build_model(card.architecture, 1, card.n_classes, **card.architecture_kwargs).eval()
    with torch.no_grad():
        for parameter in model.parameters():  # weights that draw several classes, unevenly
            parameter.normal_(0.0, 0.5)
    runner = SegmentationRunner((model, card), batch_slices=3)
    hu = np.random.default_rng(2).normal(0, 400, (3, 32, 28)).astype(np.float32)
    labels = runner.predict_slices(hu, card.input_spacing_mm)  # the model's own grid: no resampling
    mirrored = runner.predict_slices(np.ascontiguousarray(hu[:, :, ::-1]), card.input_spacing_mm)
    expected = np.asarray(card.mirror_permutation() if mirror else [0, 3, 2, 1], dtype=np.uint8)[labels[:, :, ::-1]]
    assert len(np.unique(labels)) > 1
    assert np.array_equal(mirrored, expected) == mirror


def test_test_time_zooms_survive_the_package_and_bad_zooms_are_named(tmp_path):
    card = _card(test_time_zooms=(0.9, 1.0, 1.1))
    model = build_model(card.architecture, 1, card.n_classes, **card.architecture_kwargs).eval()
    save_package(tmp_path / "pkg", model, card)
    assert load_package(tmp_path / "pkg")[1].test_time_zooms == (0.9, 1.0, 1.1)
    for zooms in ((), (1.0, 3.0), (0.0,)):
        with pytest.raises(ModelCardError, match="test_time_zooms"):
            _card(test_time_zooms=zooms)
    data = json.loads(card.to_json())
    data["test_time_zooms"] = "large"
    with pytest.raises(ModelCardError, match="test_time_zooms"):
        ModelCard.from_dict(data)


def test_zoomed_predictions_come_back_to_the_ct_grid_in_place():
    # Each zoom samples the disc on another model grid; averaged back on the CT's grid, the disc
    # keeps its place and size (a zoom not undone would scale it by up to 10 %: DSC about 0.9).
    hu, disc = _disc_ct()
    for zooms in ((0.9,), (1.1,), (0.9, 1.0, 1.1)):
        runner = SegmentationRunner((_ThresholdNet(), _card(test_time_zooms=zooms)), batch_slices=2)
        labels = runner.predict_slices(hu, (0.8, 0.8, 2.0))
        assert compare_masks(disc, labels == 1, (0.8, 0.8, 2.0)).dsc > 0.98, zooms
        assert np.allclose(np.argwhere(labels[0] == 1).mean(axis=0), (80.6, 61.3), atol=0.3), zooms


def test_a_zoom_changes_what_the_network_sees_and_zoom_one_is_the_plain_path():
    torch.manual_seed(5)
    card = _card()
    model = build_model(card.architecture, 1, card.n_classes, **card.architecture_kwargs).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.5)
    hu = np.random.default_rng(2).normal(0, 400, (2, 40, 36)).astype(np.float32)

    def labels(zooms):
        return SegmentationRunner((model, dataclasses.replace(card, test_time_zooms=zooms))).predict_slices(hu, (1.6, 1.6))

    plain = labels(None)
    assert len(np.unique(plain)) > 1
    assert np.array_equal(labels((1.0,)), plain)
    assert not np.array_equal(labels((1.2,)), plain) and not np.array_equal(labels((0.9, 1.0, 1.1)), plain)
