"""Training on OpenKBP patients named in a train-seg config: partial labels, resume, region check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import typer

from rtgrid.engines.imaging.openkbp import load_openkbp_patient
from rtgrid.engines.imaging.volume import Volume
from rtgrid.engines.segmentation.deep.package import load_package
from rtgrid.engines.segmentation.deep.region import UnknownRegionError, check_region
from rtgrid.engines.segmentation.deep.training import (
    CHECKPOINT_FILE,
    dice_ce_loss,
    known_classes,
)
from rtgrid.master.train_cli import TrainSetupError, expand_cases, load_openkbp_case, load_train_config, train_seg_command
from tests.conftest import require_shared

torch.set_num_threads(2)
OARS = ("Brainstem", "SpinalCord", "Parotid_R", "Parotid_L", "Esophagus", "Larynx", "Bone_Mandible")


def test_an_unknown_class_is_neither_background_nor_scored() -> None:
    """A sample that lacks class 2 pays the same loss whether its background pixels go to
    background or to class 2; a sample that knows class 2 pays more for the second."""
    torch.manual_seed(0)
    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    labels[:, 2:5, 2:5] = 1
    base = torch.randn(2, 3, 8, 8)
    swapped = base.clone()
    background = labels == 0
    # Move the background pixels' logit mass from class 0 to class 2.
    swapped[:, 0][background], swapped[:, 2][background] = base[:, 2][background], base[:, 0][background]
    partial = torch.tensor([[True, True, False], [True, True, False]])
    assert dice_ce_loss(base, labels, known=partial).item() == pytest.approx(dice_ce_loss(swapped, labels, known=partial).item(), abs=1e-5)
    confident = base.clone()
    confident[:, 2][background] = 8.0  # class 2 claims all the background
    assert dice_ce_loss(confident, labels).item() > dice_ce_loss(confident, labels, known=partial).item() + 1.0


def test_a_missing_organ_is_unknown_for_that_patient(tmp_path: Path) -> None:
    train = require_shared("openkbp/train")
    case = load_openkbp_case(train / "pt_1.npz")  # contoured without Esophagus and Larynx
    config, _ = load_train_config(_config_file(tmp_path, [{"openkbp": str(train / "pt_1.npz")}]))
    known = known_classes(case, config.classes)
    assert known.tolist() == [True, True, True, True, True, False, False, True]
    assert "PTV70" not in case.labels  # targets are not organs at risk


def _config_file(folder: Path, cases: list[dict]) -> Path:
    config = json.loads((Path(__file__).resolve().parents[3] / "engines/segmentation/deep/builtin/train/hn-oar-unet-cuda.json").read_text())
    config.update(
        architecture_kwargs={"base_channels": 4, "depth": 2}, patch_size=[32, 32], batch_size=4,
        iterations_per_epoch=3, max_epochs=2, validation_slice_step=16, cases=cases,
    )
    path = folder / "config.json"
    path.write_text(json.dumps(config))
    return path


def test_train_seg_on_named_openkbp_patients_resumes_to_the_same_weights(tmp_path: Path) -> None:
    train, validation = require_shared("openkbp/train"), require_shared("openkbp/validation")
    cases = [{"openkbp": str(train / "pt_[12].npz")}, {"openkbp": str(validation / "pt_201.npz"), "validation": True}]
    config = _config_file(tmp_path, cases)
    loaded, entries = load_train_config(config)
    items, validation_ids = expand_cases(entries, config.parent)
    assert [Path(what).name for _, what in items] == ["pt_1.npz", "pt_2.npz", "pt_201.npz"] and validation_ids == ("pt_201",)
    assert loaded.body_region == "head_and_neck"

    whole, halves = tmp_path / "whole", tmp_path / "halves"
    # The halves load and prepare their cases on 3 threads: the weights do not depend on it.
    train_seg_command(config, out=whole, device="cpu", seed=None, resume=True, max_epochs_this_run=None, max_minutes=None,
                      workers=1)
    train_seg_command(config, out=halves, device="cpu", seed=None, resume=True, max_epochs_this_run=1, max_minutes=None,
                      workers=3)
    assert torch.load(halves / CHECKPOINT_FILE, weights_only=False)["epoch"] == 1
    train_seg_command(config, out=halves, device="cpu", seed=None, resume=True, max_epochs_this_run=None, max_minutes=None,
                      workers=3)
    (model_a, card_a), (model_b, card_b) = load_package(whole / "package"), load_package(halves / "package")
    for key, value in model_a.state_dict().items():
        torch.testing.assert_close(value, model_b.state_dict()[key], rtol=0, atol=0)
    assert card_a.body_region == "head_and_neck"
    assert card_a.training_data["class_counts"]["esophagus"] == {"training": 1, "validation": 1}
    assert [c["case_id"] for c in card_a.training_data["validation_cases"]] == ["pt_201"]
    assert set(card_a.validation_metrics["classes"]["mandible"]) == {"dsc", "ji", "hd95_mm", "asd_mm", "cases"}
    assert [label.rtstruct_name for label in card_a.labels] == list(OARS)


def test_a_glob_that_matches_nothing_is_named(tmp_path: Path) -> None:
    config = _config_file(tmp_path, [{"openkbp": "nowhere/pt_*.npz"}])
    _, entries = load_train_config(config)
    with pytest.raises(TrainSetupError, match="no OpenKBP .npz file matches .*nowhere"):
        expand_cases(entries, config.parent)


def test_head_and_neck_region_is_found_on_openkbp_and_not_on_the_abdomen(totalseg_dir: Path) -> None:
    from rtgrid.engines.imaging.intake import load_series_dir

    patient = load_openkbp_patient(require_shared("openkbp/validation") / "pt_201.npz")
    check = check_region(patient.volume, "head_and_neck")
    assert check.covered and check.last_slice - check.first_slice >= 12
    abdomen = load_series_dir(totalseg_dir / "ct_dicom").volume
    check = check_region(abdomen, "head_and_neck")
    assert not check.covered and "does not cover the head and neck" in check.reason
    assert check_region(abdomen, "").covered
    with pytest.raises(UnknownRegionError, match="pelvis"):
        check_region(Volume(np.zeros((2, 4, 4)), [0, 0, 0], [1, 1, 1]), "pelvis")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine with a CUDA device trains there")
def test_cuda_training_without_a_cuda_device_is_refused_by_name(tmp_path: Path) -> None:
    config = _config_file(tmp_path, [{"openkbp": "no-such-folder/pt_*.npz"}])
    with pytest.raises(typer.BadParameter, match="no CUDA device"):
        train_seg_command(config, out=tmp_path / "out", device="cuda", seed=None, resume=True, max_epochs_this_run=None,
                          max_minutes=None, workers=1)
    assert not (tmp_path / "out").exists()
