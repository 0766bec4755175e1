"""The head-and-neck model shipped in the repository: complete, verified, and honest about itself."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import pytest
import torch

from rtgrid.engines.imaging.openkbp import OAR_NAMES
from rtgrid.engines.segmentation.deep.builtin import BUILTIN_DIR, HN_OAR_PACKAGE, builtin_packages
from rtgrid.engines.segmentation.deep.package import WEIGHTS_FILE, load_package, package_hash

REPO = Path(__file__).resolve().parents[3]


def test_builtin_package_loads_and_its_hash_matches_its_card() -> None:
    assert HN_OAR_PACKAGE in builtin_packages()
    model, card = load_package(HN_OAR_PACKAGE)  # raises when weights or card differ from the hash
    assert len(package_hash(HN_OAR_PACKAGE)) == 64
    assert (HN_OAR_PACKAGE / WEIGHTS_FILE).stat().st_size < 8 * 2**20  # a few MB in git
    assert card.body_region == "head_and_neck"
    assert [label.rtstruct_name for label in card.labels] == list(OAR_NAMES)
    assert all(label.roi_type == "ORGAN" for label in card.labels)
    assert card.test_time_mirror == (("parotid_l", "parotid_r"),)  # trained with mirroring: inferred with it
    data = card.extra["training_data"]
    assert "Med. Phys. 48 (2021)" in data["citation"] and "MIT" in data["licence"]
    # Trained on the 170 training patients, its epoch selected on 11 validation patients, and
    # scored on all 33 (none of them trained on).
    trained = {c["case_id"] for c in card.training_data["training_cases"]}
    selected_on = {c["case_id"] for c in card.training_data["validation_cases"]}
    assert len(trained) == 170 and len(selected_on) == 11 and not trained & selected_on
    assert all(int(case.split("_")[1]) <= 200 for case in trained)  # OpenKBP's training patients are pt_1..pt_200
    validation = card.validation_metrics["openkbp_validation"]
    assert validation["patients"] == 33 and set(validation["organs"]) == set(OAR_NAMES)
    assert sum(p.numel() for p in model.parameters()) > 0


def test_setup_ships_the_builtin_packages_as_package_data() -> None:
    text = (REPO / "setup.py").read_text()
    assert "rtgrid.engines.segmentation.deep.builtin" in text
    patterns = ["*/weights.pt", "*/card.json", "*/sha256", "train/*.json"]
    for path in HN_OAR_PACKAGE.iterdir():
        relative = str(path.relative_to(BUILTIN_DIR))
        assert any(fnmatch.fnmatch(relative, p) for p in patterns), relative
    for pattern in patterns:
        assert f'"{pattern}"' in text


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the CPU path is what CI runs)")
def test_cuda_autocast_labels_agree_with_the_cpu_path() -> None:
    from rtgrid.engines.imaging.openkbp import load_openkbp_patient
    from rtgrid.engines.segmentation.deep.inference import SegmentationRunner
    from tests.conftest import require_shared

    volume = load_openkbp_patient(require_shared("openkbp/validation") / "pt_201.npz").volume
    cpu = SegmentationRunner(HN_OAR_PACKAGE).predict_volume(volume).voxels
    gpu = SegmentationRunner(HN_OAR_PACKAGE, device="cuda", precision="auto").predict_volume(volume).voxels
    for label in range(1, len(OAR_NAMES) + 1):
        a, b = cpu == label, gpu == label
        if a.any() or b.any():
            assert 2 * (a & b).sum() / (a.sum() + b.sum()) >= 0.99, label
