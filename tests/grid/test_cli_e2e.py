"""The hospital's command line against a real grid: upload with a progress bar (stdout stays the
case id; ``--format json`` stays one object per line), ``cases``, ``submit``, ``job``, ``cancel``."""

from __future__ import annotations

import json
import os
import subprocess

from rtgrid.engines.phantom import write_phantom_case

from .conftest import rtgrid_cmd


def _run(grid, *args: str) -> subprocess.CompletedProcess:
    run = subprocess.run(rtgrid_cmd(*args), capture_output=True, text=True, timeout=300, env={**os.environ, **grid.env()})
    assert "Traceback" not in run.stderr, run.stderr
    return run


def test_upload_cases_job_cancel(grid, tmp_path):
    phantom = write_phantom_case(tmp_path / "phantom", shape=(12, 64, 64), spacing_mm=(3.0, 3.0, 3.0), seed=3)
    size = sum(p.stat().st_size for p in phantom.ct_files)

    text = _run(grid, "upload", str(phantom.ct_dir), "--label", "cli-text")
    assert text.returncode == 0, text.stderr
    case_id = text.stdout.strip()
    assert len(text.stdout.splitlines()) == 1 and case_id  # the bar went to stderr
    assert f"{size / 1e3:.1f}/{size / 1e3:.1f} kB" in text.stderr  # the bar by bytes, on stderr, at its total

    as_json = _run(grid, "upload", str(phantom.ct_dir), "--label", "cli-json", "--format", "json")
    assert as_json.returncode == 0 and as_json.stderr == ""
    [record] = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert record["files"] == 12

    listed = [json.loads(line) for line in _run(grid, "cases", "--format", "json").stdout.splitlines()]
    labels = {c["case_id"]: c["label"] for c in listed}
    assert labels[case_id] == "cli-text" and labels[record["case_id"]] == "cli-json"
    assert next(c for c in listed if c["case_id"] == case_id)["n_files"] == 12

    submitted = _run(grid, "submit", case_id, "--kind", "contour", "--priority", "-100", "--format", "json")
    job_id = json.loads(submitted.stdout)["job_id"]
    shown = json.loads(_run(grid, "job", job_id, "--format", "json").stdout)
    assert shown["job_id"] == job_id and shown["case_id"] == case_id and shown["kind"] == "contour"
    cancelled = _run(grid, "cancel", job_id)
    assert cancelled.returncode == 0 and cancelled.stdout.split() in ([job_id, "cancelled"], [job_id, "succeeded"])
    text_line = _run(grid, "job", job_id).stdout
    assert job_id in text_line and cancelled.stdout.split()[1] in text_line

    unknown = _run(grid, "job", "no-such-job")
    assert unknown.returncode == 3 and unknown.stderr.startswith("error: NOT_FOUND")
