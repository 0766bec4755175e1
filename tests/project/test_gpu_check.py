"""`make gpu-check` without a GPU: it steps aside at once, and its plumbing works CPU against CPU.

The real check needs a CUDA machine (`python -m bench.gpu_check` there); here the same comparisons
run with `--device cpu --tiny` (the device under test is the CPU too, so every difference must be
zero), and a check that runs past its budget fails the run with exit code 1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import gpu_check

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def _run(*args: str, timeout_s: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.gpu_check", *args], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=timeout_s)


def test_without_a_cuda_device_it_says_so_and_exits_0():
    if gpu_check.cuda_present():
        pytest.skip("a CUDA device is present: `make gpu-check` runs the real check here")
    started = time.perf_counter()
    done = _run(timeout_s=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "no CUDA device"
    assert time.perf_counter() - started < 30  # at once: no check runs


def test_self_test_runs_every_comparison_cpu_against_cpu():
    # 30-40 s on 2 busy cores, most of it imports (torch, its compiler for Adam). The budgets are
    # scaled up: a loaded machine must not fail the plumbing (the budget itself is tested below).
    done = _run("--device", "cpu", "--tiny", "--threads", "2", "--budget-scale", "4", timeout_s=200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, "stdout must be exactly one JSON line"
    result = json.loads(lines[0])
    assert result["all_passed"] is True and result["device"] == "cpu"
    checks = result["checks"]
    assert set(checks) == set(gpu_check.CHECKS)
    assert all(c["passed"] is True for c in checks.values()), checks
    # Same device on both sides: every difference is exactly zero.
    assert checks["dij"]["phantom_tiny"]["rel_max_error"] == 0.0
    assert checks["dij"]["phantom_tiny"]["nnz"] > 0
    assert checks["solver"]["objective_rel_diff"] == 0.0
    assert max(checks["solver"]["dvh_abs_diff_gy"].values()) == 0.0
    assert checks["plan"]["device_used"] == "cpu" and checks["plan"]["max_dose_gy"] > 0
    assert checks["seg_training"]["amp"] == "off"
    for precision in ("fp16", "auto"):
        dsc = checks["seg_inference"][precision]["dsc_per_class"]
        assert dsc and set(dsc.values()) == {1.0}  # something was labelled, identically
    assert checks["dose_prediction"]["max_abs_diff_gy"] == 0.0
    figures = result["figures"]
    for key in ("dij_phantom_tiny_s_cpu_selftest", "solver_s_cpu_selftest", "plan_s_cpu_selftest",
                "seg_slices_per_s_cpu_selftest_fp16", "dose_prediction_s_cpu_selftest"):
        assert figures[key] > 0, key


def test_a_check_past_its_budget_fails_the_run():
    # In its own process: the alarm may interrupt an import, which must not touch this one's modules.
    done = _run("--device", "cpu", "--tiny", "--checks", "plan", "--budget-scale", "0.02", timeout_s=90)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert done.returncode == 1 and result["all_passed"] is False
    assert result["checks"]["plan"]["passed"] is False
    assert "CheckTimeout" in result["checks"]["plan"]["error"]


def test_unknown_check_is_refused_by_name():
    done = _run("--device", "cpu", "--checks", "dij,warp-drive", timeout_s=60)
    assert done.returncode == 2 and "warp-drive" in done.stderr


def test_a_budget_expiring_inside_an_import_lets_the_import_finish(tmp_path, monkeypatch):
    # The flake this guards against: the alarm raised inside `import torch...`, leaving a half
    # initialized module, and the check failed with ImportError instead of CheckTimeout.
    (tmp_path / "slow_to_import.py").write_text("import time\ntime.sleep(0.3)\nFINISHED = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(gpu_check.CheckTimeout):
        with gpu_check.time_budget(0.05):
            import slow_to_import

            assert slow_to_import.FINISHED
            deadline = time.perf_counter() + 5
            while time.perf_counter() < deadline:  # the deferred alarm arrives here
                pass
    assert sys.modules["slow_to_import"].FINISHED
    sys.modules.pop("slow_to_import")
