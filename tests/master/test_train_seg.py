"""``rtgrid train-seg`` on real files: a DICOM CT + RTSTRUCT case and a NIfTI CT + label-map case,
into a model package the registry accepts."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from rtgrid.engines.dicomrt.rtstruct import StructureSpec, write_rtstruct
from rtgrid.engines.imaging.intake import load_series_dir
from rtgrid.engines.phantom import make_phantom, write_phantom_case
from rtgrid.engines.segmentation.deep.package import load_package
from rtgrid.master import models
from rtgrid.master.blobs import BlobStore
from rtgrid.master.store.sqlite import SqliteStore
from rtgrid.master.train_cli import TrainSetupError, load_case, load_train_config

SHAPE, SPACING = (8, 96, 96), (4.0, 4.0, 3.0)
CONFIG = {
    "name": "site-lungs", "version": "1",
    "classes": [{"name": "lungs", "rtstruct_name": "Lungs", "sources": ["Lung_L", "Lung_R", 2, 3],
                 "largest_component": False}],
    "architecture": "unet2d", "architecture_kwargs": {"base_channels": 4, "depth": 2},
    "input_spacing_mm": [4.0, 4.0], "patch_size": [48, 48], "batch_size": 2, "iterations_per_epoch": 4,
    "max_epochs": 2, "seed": 3, "augment": {"probability": 0.5, "rotation_deg": 5.0},
    "cases": [{"id": "dicom", "ct": "a/ct", "rtstruct": "a/RS.dcm"},
              {"id": "nifti", "ct": "b/ct.nii.gz", "labels": "b/seg.nii.gz", "label_names": {"2": "Lung_L", "3": "Lung_R"}}],
}


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    ct_dir = write_phantom_case(root / "a", shape=SHAPE, spacing_mm=SPACING, seed=5).ct_dir
    series = load_series_dir(ct_dir)
    truth = make_phantom(SHAPE, SPACING, seed=5).labels
    specs = [StructureSpec(n, truth[n], "ORGAN", (0, 255, 0), "MANUAL") for n in ("BODY", "Lung_L", "Lung_R")]
    write_rtstruct(series, specs, label="clinic").save_as(root / "a" / "RS.dcm", enforce_file_format=True)
    other = make_phantom(SHAPE, SPACING, seed=6)
    (root / "b").mkdir()
    labels = np.zeros(SHAPE, np.uint8)
    labels[other.labels["Lung_L"]], labels[other.labels["Lung_R"]] = 2, 3
    for array, name in ((other.ct.voxels, "ct.nii.gz"), (labels, "seg.nii.gz")):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(SPACING)
        image.SetOrigin(tuple(other.ct.origin_mm))
        sitk.WriteImage(image, str(root / "b" / name))
    path = root / "train.json"
    path.write_text(json.dumps(CONFIG))
    return path


def test_config_and_cases_load_with_clear_errors(config_file, tmp_path):
    config, entries = load_train_config(config_file)
    assert config.classes[0].sources == ("Lung_L", "Lung_R", 2, 3) and config.patch_size == (48, 48)
    dicom = load_case(entries[0], config_file.parent, 0)
    assert set(dicom.labels) == {"BODY", "Lung_L", "Lung_R"}  # the RTSTRUCT's ROIs, rasterised on the CT
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**CONFIG, "learning_rat": 0.1}))
    with pytest.raises(TrainSetupError, match="unknown field.*learning_rat"):
        load_train_config(bad)
    with pytest.raises(TrainSetupError, match="exactly one of 'rtstruct' or 'labels'"):
        load_case({"ct": "a/ct"}, config_file.parent, 0)
    with pytest.raises(TrainSetupError, match="not found"):
        load_case({"ct": "nowhere", "labels": "x"}, config_file.parent, 3)


def test_cli_trains_resumes_and_writes_a_registrable_package(config_file, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-c", "from rtgrid.client.cli.main import main; main()", "train-seg", str(config_file),
               "--out", str(out)]
    first = subprocess.run([*command, "--max-epochs-this-run", "1"], capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["epochs"] == 1
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300)  # continues from the checkpoint
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["epochs"] == 2
    assert summary["history"][0] == json.loads(first.stdout)["history"][0]  # epoch 1 came from the checkpoint
    _, card = load_package(summary["package"])
    assert card.training_data["label_mapping"] == {"lungs": ["Lung_L", "Lung_R", 2, 3]}
    assert {c["case_id"] for c in card.training_data["training_cases"] + card.training_data["validation_cases"]} == {
        "dicom", "nifti"}
    store = SqliteStore(tmp_path / "rtgrid.sqlite")
    try:
        package = out / "package"
        receiver = models.PackageReceiver(store, BlobStore(tmp_path / "blobs"), summary["sha256"],
                                          (package / "card.json").read_bytes(), (package / "weights.pt").stat().st_size)
        receiver.write((package / "weights.pt").read_bytes())
        assert receiver.finish().name == "site-lungs"
        receiver.discard()
    finally:
        store.close()
