"""The master <-> agent contract: published files travel in a result once, and are kept once."""

from __future__ import annotations

import pytest

from rtgrid.master.blobs import BlobStore
from rtgrid.master.codec import pack, unpack
from rtgrid.protos.grid_contract import (
    Artifact,
    Task,
    agent_actor_name,
    detach_files,
    file_key,
    model_actor_name,
    published,
    publishing,
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
