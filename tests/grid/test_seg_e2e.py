"""Deep models on the grid, end to end: register a real (small, trained here) model package with
the operator's CLI, contour a CT with it and the classical engine, and check the model stays
warm on the agents between jobs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import grpc
import numpy as np
import pydicom
import pytest

from rtgrid.protos.grid_contract import RAY_NAMESPACE, model_actor_name
from rtgrid.client.cli.main import assist_param
from rtgrid.engines.dicomrt.rtstruct import StructureSpec, read_rtstruct, read_rtstruct_rois, write_rtstruct
from rtgrid.engines.imaging.intake import load_series_dir
from rtgrid.engines.phantom import make_phantom, write_phantom_case
from rtgrid.engines.segmentation.deep.phantom_model import PHANTOM_MODEL_CONFIG, train_phantom_model

from .conftest import rtgrid_cmd
from .test_contour_e2e import dsc, run_contour_job

SHAPE, SPACING_MM, SEED = (40, 128, 128), (3.0, 3.0, 3.0), 1
CLASSICAL = {"BODY", "Lung_L", "Lung_R", "Bones", "AirCavity"}


@pytest.fixture(scope="module")
def phantom_model(tmp_path_factory):
    return train_phantom_model(tmp_path_factory.mktemp("phantom-model"))


def _cli(grid, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(rtgrid_cmd(*args), capture_output=True, text=True, env={**os.environ, **grid.env()},
                          timeout=120)


def _actor_stats(agent_id: str, sha256: str) -> dict:
    import ray

    return ray.get(ray.get_actor(model_actor_name(agent_id, sha256), namespace=RAY_NAMESPACE).stats.remote(), timeout=60)


def test_registry_over_the_cli_refuses_bad_packages(grid, phantom_model, tmp_path):
    package = phantom_model.package_dir
    added = _cli(grid, "admin", "models", "add", str(package), "--format", "json")
    assert added.returncode == 0, added.stderr
    record = json.loads(added.stdout)
    assert record["sha256"] == phantom_model.package_hash
    listed = _cli(grid, "admin", "models", "--format", "json")
    models = {m["sha256"]: m for m in map(json.loads, listed.stdout.splitlines())}
    mine = models[phantom_model.package_hash]
    assert (mine["name"], mine["version"], mine["architecture"]) == (PHANTOM_MODEL_CONFIG.name, "0.1.0", "unet2d")
    assert mine["labels"] == ["Lungs_DL", "Bones_DL"]
    assert mine["metrics"]["mean_dsc"] == pytest.approx(phantom_model.best_score)
    # A damaged copy: refused with the reason, nothing registered.
    damaged = tmp_path / "damaged"
    shutil.copytree(package, damaged)
    weights = bytearray((damaged / "weights.pt").read_bytes())
    weights[-50] ^= 0xFF
    (damaged / "weights.pt").write_bytes(bytes(weights))
    with grid.client() as client:
        with pytest.raises(grpc.RpcError) as refused:
            client.register_model(damaged)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "does not match" in refused.value.details()
        assert len(client.models()) == len(models)


def test_contour_with_a_model_merges_and_keeps_it_warm(grid, phantom_model, tmp_path):
    case_dir = write_phantom_case(tmp_path / "case", shape=SHAPE, spacing_mm=SPACING_MM, seed=SEED)
    truth = make_phantom(SHAPE, SPACING_MM, SEED).labels
    lungs = truth["Lung_L"] | truth["Lung_R"]
    # The second job also completes "lungs" drawn on every fifth slice (its model knows "lungs").
    drawn = np.zeros(SHAPE, bool)
    drawn[2::5] = lungs[2::5]
    series = load_series_dir(case_dir.ct_dir)
    write_rtstruct(series, [StructureSpec("lungs", drawn, "ORGAN", (0, 0, 255), "MANUAL")]).save_as(
        tmp_path / "drawn.dcm", enforce_file_format=True)
    extra = [{}, {"assist": assist_param(tmp_path / "drawn.dcm")}]
    with grid.client() as client:
        client.register_model(phantom_model.package_dir)  # idempotent: maybe registered above already
        case = client.upload_folder(case_dir.ct_dir).case
        with pytest.raises(grpc.RpcError) as unknown:
            client.submit(case.case_id, "contour", params={"models": "no-such-model"})
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND and "no-such-model" in unknown.value.details()
        runs = []
        for n in (1, 2):
            _, job, _, files = run_contour_job(client, case_dir.ct_dir, tmp_path / f"job{n}",
                                               models=PHANTOM_MODEL_CONFIG.name, **extra[n - 1])
            shards = [s for s in client.shards(job.job_id) if s.stage == "segment"]
            runs.append((job, files, shards))
    sha = phantom_model.package_hash

    # One RTSTRUCT holds the classical structures and the model's, named by its card.
    job, files, _ = runs[0]
    assert job.params["models"] == f"{PHANTOM_MODEL_CONFIG.name}@0.1.0:{sha}"
    ds = pydicom.dcmread(files["RS.contours.dcm"])
    rois = {r.name: r for r in read_rtstruct_rois(ds)}
    assert set(rois) == CLASSICAL | {"Lungs_DL", "Bones_DL"}
    descriptions = {r.ROIName: r.get("ROIDescription", "") for r in ds.StructureSetROISequence}
    assert sha[:16] in descriptions["Lungs_DL"]
    masks = read_rtstruct(ds, series.volume)
    assert dsc(masks["Lungs_DL"], lungs) >= 0.85
    assert dsc(masks["Bones_DL"], truth["Bones"]) >= 0.6

    # Assisted: the drawn structure as drawn, beside it the completed one, marked machine-completed.
    ds = pydicom.dcmread(runs[1][1]["RS.contours.dcm"])
    rois = {r.name: r for r in read_rtstruct_rois(ds)}
    assert set(rois) == CLASSICAL | {"Lungs_DL", "Bones_DL", "lungs", "lungs_completed"}
    assert (rois["lungs"].generation_algorithm, rois["lungs_completed"].generation_algorithm) == ("MANUAL", "SEMIAUTOMATIC")
    description = {r.ROIName: r.get("ROIDescription", "") for r in ds.StructureSetROISequence}["lungs_completed"]
    assert description.startswith("machine-completed by rtgrid") and "refined by model rtgrid-phantom@0.1.0" in description
    masks = read_rtstruct(ds, series.volume)
    span = slice(2, 38)  # interpolation runs between the first and last drawn slice
    assert dsc(masks["lungs_completed"][span], lungs[span]) >= 0.9

    # Warm: each agent that served the model loaded it once, and served both jobs' shards.
    summaries = [json.loads(files["contours.json"].read_text())["models"][0] for _, files, _ in runs]
    assert [s["sha256"] for s in summaries] == [sha, sha]
    served: dict[str, int] = {}
    for _, _, shards in runs:
        for shard in shards:
            served[shard.agent_id] = served.get(shard.agent_id, 0) + 1
    assert sum(served.values()) == 4  # 40 slices: two batches per job
    for agent_id, count in served.items():
        stats = _actor_stats(agent_id, sha)
        assert stats["loads"] == 1 and stats["shards"] == count, stats
    both = [set(s.agent_id for s in shards) for _, _, shards in runs]
    assert both[0] & both[1], "no agent served both jobs: reuse not exercised"
    assert all(a["loads"] == 1 for s in summaries for a in s["actors"])
