"""`make bench-scale` at its smallest: a tiny CT on 1 then 2 agents of its own grid, one JSON line with
every figure the README quotes (the speed itself is not checked: the machine is shared)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.scale import parse_agent_counts, summarize

REPO = Path(__file__).resolve().parents[2]
SMALLEST = ["--slices", "8", "--size", "64", "--agents", "1,2", "--shards", "2", "--repeats", "1"]
# Mostly starting the grid (Ray head, master, two agents one after the other) and each agent's first
# shard: 145-200 s seen on 2 cores shared at load averages of 15-22.
RUN_TIMEOUT_S = 400


def _run(*args: str, timeout_s: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "bench.scale", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout_s)


def test_smallest_configuration_ends_with_one_json_line_of_figures():
    done = _run(*SMALLEST, timeout_s=RUN_TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, "stdout must be exactly one JSON line"
    result = json.loads(lines[0])
    assert result["benchmark"] == "scale" and "error" not in result
    config = result["config"]
    assert config["shape"] == [8, 64, 64] and config["agents"] == [1, 2] and config["shards"] == 2
    assert config["cpu_count"] == os.cpu_count() and config["agent_cpus"] == 1
    rows = result["results"]
    assert [r["agents"] for r in rows] == [1, 2]
    for row in rows:
        assert row["wall_s"] > 0 and row["contour_stage_s"] > 0 and row["merge_s"] > 0
        assert row["efficiency"] == pytest.approx(row["speedup"] / row["agents"], abs=1e-3)
        assert 1 <= row["agents_used"] <= row["agents"]
        assert row["speedup_ceiling"] == min(row["agents"], os.cpu_count())
    assert rows[0]["speedup"] == 1.0 and rows[0]["efficiency"] == 1.0
    assert rows[1]["speedup"] == pytest.approx(rows[0]["wall_s"] / rows[1]["wall_s"], abs=1e-3)
    for n in ("1", "2"):
        run = result["runs"][n]
        assert run["contour_shards"] == 2 and run["merge_shards"] == 1
        assert run["warmup"]["all_agents_warm"] is True
        assert len(run["wall_s_runs"]) == 1 and run["wall_s"] == run["wall_s_runs"][0]


@pytest.mark.parametrize("args, message", [
    (["--agents", "2,1"], "counts must increase"),
    (["--agents", "0,1"], "at least 1"),
    (["--agents", "one"], "comma-separated positive integers"),
    (["--agents", "1,4", "--shards", "2"], "below the largest agent count 4"),
])
def test_bad_options_are_refused_before_any_grid_starts(args, message):
    done = _run(*args, timeout_s=60)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert done.stdout == ""


def test_speedup_and_efficiency_are_against_the_first_count():
    rows = [{"agents": 1, "wall_s": 12.0, "contour_stage_s": 10.0, "merge_s": 2.0, "agents_used": 1},
            {"agents": 2, "wall_s": 8.0, "contour_stage_s": 6.0, "merge_s": 2.0, "agents_used": 2},
            {"agents": 4, "wall_s": 8.0, "contour_stage_s": 6.0, "merge_s": 2.0, "agents_used": 4}]
    out = summarize(rows, cpu_count=2)
    assert [r["speedup"] for r in out] == [1.0, 1.5, 1.5]
    assert [r["efficiency"] for r in out] == [1.0, 0.75, 0.375]
    assert [r["contour_stage_speedup"] for r in out] == [1.0, 1.667, 1.667]
    assert [r["speedup_ceiling"] for r in out] == [1, 2, 2]
    assert parse_agent_counts("1,2,4") == [1, 2, 4]
