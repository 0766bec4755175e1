"""The master <-> agent contract: published files travel in a result once, and are kept once."""

from __future__ import annotations

import numpy as np
import pytest

from rtgrid.master.blobs import BlobStore
from rtgrid.master.codec import pack, unpack
from rtgrid.protos.grid_contract import (
    CALL_TYPES,
    Artifact,
    BeamDijCall,
    DevicePlanResult,
    PlanSetup,
    Task,
    agent_actor_name,
    detach_files,
    file_key,
    model_actor_name,
    published,
    publishing,
    shard_call_from,
    stored_file_sha256,
)


def test_a_published_file_comes_back_as_it_went():
    files = (Artifact("RD.standard.dcm", "rtdose", "RTDOSE", b"dose" * 100), Artifact("dvh.png", "image", "", b"png"))
    result = {**publishing(*files), "plan_released": True}
    assert published(result) == list(files)
    del result[file_key("dvh.png")]
    with pytest.raises(KeyError):
        published(result)


def test_the_kept_result_holds_each_file_once_by_hash(tmp_path):
    blobs = BlobStore(tmp_path / "blobs")
    big = bytes(range(256)) * 4096  # 1 MiB
    result = {**publishing(Artifact("standard-plan.npz", "standard_plan", "", big),
                           Artifact("plan-report.json", "report", "", b"{}")), "plan_released": True}
    kept = detach_files(result, blobs.put_bytes)
    packed = pack(kept)
    assert len(packed) < 4096  # the bytes are not in the result any more
    restored = unpack(packed)
    assert restored["plan_released"] is True
    assert blobs.read_bytes(stored_file_sha256(restored, "standard-plan.npz")) == big
    assert [(a["name"], a["size"]) for a in restored["artifacts"]] == [("standard-plan.npz", len(big)), ("plan-report.json", 2)]
    with pytest.raises(KeyError, match="no file 'RD.standard.dcm'"):
        stored_file_sha256(restored, "RD.standard.dcm")


def test_names_both_sides_agree_on():
    assert Task("contour.segment") is Task.CONTOUR_SEGMENT and Task.PLAN_OPTIMIZE == "plan.optimize"
    assert agent_actor_name("a1") != model_actor_name("a1", "f" * 64)
    assert model_actor_name("a1", "f" * 64) == model_actor_name("a1", "f" * 16 + "0" * 48)  # the hash's first 16


def test_every_task_has_one_typed_call():
    assert set(CALL_TYPES) == set(Task)
    assert all(cls.task is task for task, cls in CALL_TYPES.items())


def test_a_typed_call_crosses_as_keyword_arguments_and_comes_back():
    call = BeamDijCall(setup={"density": np.zeros(2)}, beam_index=3, machine_id="standard-6mv")
    again = shard_call_from("plan.beam_dij", call.kwargs())
    assert isinstance(again, BeamDijCall) and again.beam_index == 3 and again.setup is call.setup


def test_arguments_that_do_not_match_the_call_are_named():
    with pytest.raises(TypeError, match=r"unknown arguments \['beam'\], missing arguments \['beam_index'\]"):
        shard_call_from(Task.PLAN_BEAM_DIJ, {"setup": {}, "beam": 1, "machine_id": "m"})
    with pytest.raises(KeyError, match="no shard task 'plan.teleport'"):
        shard_call_from("plan.teleport", {})


def _setup() -> PlanSetup:
    return PlanSetup(
        density=np.ones((2, 3, 4), np.float32), origin_mm=[0.0, 1.0, 2.0], spacing_mm=[3.0, 3.0, 3.0],
        direction=[[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]],
        masks={"BODY": np.ones((2, 3, 4), bool), "PTV": np.zeros((2, 3, 4), bool)}, isocenter_mm=[1.0, 2.0, 3.0],
        gantry_deg=[0.0, 180.0], bixel_mm=5.0, sad_mm=1000.0, body="BODY", rtstruct_uid="1.2.3",
        bixels=[(np.arange(3), np.arange(3)), (np.arange(2), np.arange(2))])


def test_the_plan_setup_is_stored_flat_and_read_back_whole():
    setup = _setup()
    stored = unpack(pack(setup.to_result()))
    # The layout of results stored by earlier grids: a restarted master reads them too.
    assert {"mask:BODY", "mask:PTV", "ix:0", "iy:1", "structures", "rtstruct_uid"} <= set(stored)
    again = PlanSetup.from_result(stored)
    assert again.masks.keys() == setup.masks.keys() and again.body == "BODY" and again.rtstruct_uid == "1.2.3"
    assert [b[0].tolist() for b in again.bixels] == [[0, 1, 2], [0, 1]]
    assert np.array_equal(again.density, setup.density) and again.gantry_deg == [0.0, 180.0]


def test_a_device_result_keeps_its_verdict_after_its_files_are_stored(tmp_path):
    result = DevicePlanResult("linac-a", False, ["gamma 91% < 95%"],
                              (Artifact("qa.linac-a.json", "qa_report", "", b"{}"),)).to_result()
    kept = unpack(pack(detach_files(result, BlobStore(tmp_path).put_bytes)))
    assert DevicePlanResult.from_result(kept) == DevicePlanResult("linac-a", False, ["gamma 91% < 95%"])
