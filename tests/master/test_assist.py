"""The ``assist`` parameter of contour jobs: refused at submission when unusable, and completed
on real DICOM in the merge (seed, box and drawn slices), marked as machine-completed."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from rtgrid.agent.executors.assist import MACHINE_COMPLETED, assisted_structures
from rtgrid.engines.dicomrt.rtstruct import StructureSpec, write_rtstruct
from rtgrid.engines.imaging.intake import load_series_dir
from rtgrid.engines.phantom import make_phantom, write_phantom_case
from rtgrid.engines.segmentation.assist import AssistInputError
from rtgrid.engines.segmentation.metrics import compare_masks
from rtgrid.master.errors import InvalidArgument
from rtgrid.master.jobs.assist import check_assist
from rtgrid.master.store.records import SeriesRecord
from rtgrid.master.store.sqlite import SqliteStore

SHAPE, SPACING = (24, 96, 96), (4.0, 4.0, 3.0)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    out = tmp_path_factory.mktemp("assist")
    series = load_series_dir(write_phantom_case(out, shape=SHAPE, spacing_mm=SPACING, seed=4).ct_dir)
    truth = make_phantom(SHAPE, SPACING, seed=4).labels
    partial = np.zeros(SHAPE, bool)
    partial[::4] = truth["Lung_R"][::4]
    ds = write_rtstruct(series, [StructureSpec("Lung_R", partial, "ORGAN", (0, 0, 255), "MANUAL")], label="drawn")
    path = out / "drawn.dcm"
    ds.save_as(path, enforce_file_format=True)
    return series, truth, json.dumps({"rtstruct_base64": base64.b64encode(path.read_bytes()).decode()})


@pytest.fixture
def store(tmp_path, case):
    series = case[0]
    s = SqliteStore(tmp_path / "rtgrid.sqlite")
    s.add_series(SeriesRecord("series-1", "case-1", "CT", series.series_instance_uid, series.frame_of_reference_uid,
                              *SHAPE, list(SPACING), "a" * 64, "b" * 64))
    yield s
    s.close()


def test_bad_assist_requests_are_refused_naming_the_problem(store, case):
    assert check_assist(case[2], store, "case-1") == case[2]
    seed = {"name": "GTV", "seed_mm": [0, 0, 0], "hu_range": [-100, 100], "max_radius_mm": 30}
    assert check_assist(json.dumps(seed), store, "case-1")
    for bad, match in (
        ("{not json", "not JSON"),
        (json.dumps({**seed, "colour": 1}), "unknown field.*colour"),
        (json.dumps({**seed, "hu_range": [100, -100]}), "empty"),
        (json.dumps({**seed, "max_radius_mm": 0}), "max_radius_mm"),
        (json.dumps({**seed, "box_mm": [[0, 0, 0], [1, 1, 1]]}), "exactly one of"),
        (json.dumps({k: v for k, v in seed.items() if k != "name"}), "name"),
        (json.dumps({**seed, "roi_type": "TUMOUR"}), "roi_type"),
        (json.dumps({"rtstruct_base64": "%%%"}), "not base64"),
        (json.dumps({"rtstruct_base64": base64.b64encode(b"not dicom").decode()}), "not a readable RTSTRUCT"),
    ):
        with pytest.raises(InvalidArgument, match=match):
            check_assist(bad, store, "case-1")


def test_an_rtstruct_drawn_on_another_ct_is_refused(tmp_path, case):
    other = SqliteStore(tmp_path / "other.sqlite")
    other.add_series(SeriesRecord("series-2", "case-2", "CT", "1.2.3", "1.2.3.4", *SHAPE, list(SPACING), "a" * 64, "b" * 64))
    with pytest.raises(InvalidArgument, match="not drawn on the case's CT"):
        check_assist(case[2], other, "case-2")
    other.close()


def test_drawn_slices_are_completed_beside_the_drawing_and_marked(case):
    series, truth, text = case
    specs, summary = assisted_structures(json.loads(text), series, {}, {"BODY"})
    drawn, completed = specs
    assert (drawn.name, drawn.generation_algorithm) == ("Lung_R", "MANUAL")
    assert (completed.name, completed.generation_algorithm) == ("Lung_R_completed", "SEMIAUTOMATIC")
    assert completed.description.startswith(MACHINE_COMPLETED) and "interpolation" in completed.description
    assert summary[0]["drawn_slices"] == [z for z in range(0, SHAPE[0], 4) if truth["Lung_R"][z].any()]
    # Interpolation stops at the last drawn slice (20): compare where the user drew.
    assert compare_masks(truth["Lung_R"][:21], completed.mask[:21], SPACING).dsc >= 0.9
    # A model's prediction of the same structure (matched by name) refines the border.
    specs, _ = assisted_structures(json.loads(text), series, {"lung_r": (truth["Lung_R"], "m@1")}, set())
    assert "refined by model m@1" in specs[1].description


def test_seed_and_box_grow_the_region_they_point_at(case):
    series, truth, _ = case
    volume = series.volume
    k, j, i = (int(v.mean()) for v in np.nonzero(truth["Lung_L"]))
    seed = volume.index_to_lps(np.array([i, j, k], float)).tolist()
    request = {"name": "LungL_seed", "seed_mm": seed, "hu_range": [-1000, -500], "max_radius_mm": 400}
    specs, _ = assisted_structures(request, series, {}, set())
    assert specs[0].generation_algorithm == "SEMIAUTOMATIC" and specs[0].description.startswith(MACHINE_COMPLETED)
    assert compare_masks(truth["Lung_L"], specs[0].mask, SPACING).dsc >= 0.9
    outside = {**request, "seed_mm": [5000.0, 0.0, 0.0]}
    with pytest.raises(AssistInputError, match="outside the volume"):
        assisted_structures(outside, series, {}, set())
