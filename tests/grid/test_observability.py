"""Operators' view: Prometheus metrics from the master and the agents move with a real job, and
the master's JSON log lines carry the job's and shards' ids."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from rtgrid.client.sdk import state_name
from rtgrid.engines.phantom import write_phantom_case

SHAPE, SPACING = (12, 48, 48), (8.0, 8.0, 6.0)
JOB_TIMEOUT_S = 240.0


def scrape(address: str) -> dict[tuple[str, tuple], float]:
    """``{(sample name, sorted labels): value}`` from ``http://address/metrics``."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text) for s in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: dict, name: str, **labels: str) -> float:
    """Sum over every sample of ``name`` whose labels include ``labels``."""
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


@pytest.fixture(scope="module")
def small_ct(tmp_path_factory) -> Path:
    return write_phantom_case(tmp_path_factory.mktemp("obs"), shape=SHAPE, spacing_mm=SPACING, seed=6).ct_dir


def test_metrics_move_with_a_job_and_logs_carry_ids(grid, small_ct):
    assert grid.metrics.startswith("127.0.0.1:"), grid.metrics  # loopback unless configured otherwise
    before = scrape(grid.metrics)
    upload_bytes = sum(p.stat().st_size for p in small_ct.iterdir())
    with grid.client() as client:
        case = client.upload_folder(small_ct).case
        job = client.submit(case.case_id, "contour", params={"shards": "2"})
        during = scrape(grid.metrics)
        deadline = time.monotonic() + JOB_TIMEOUT_S
        for _ in client.watch(job.job_id):
            assert time.monotonic() < deadline
        done = client.job(job.job_id)
        assert state_name(done.state) == "succeeded", done.error
        artifacts = client.artifacts(job.job_id)
        downloaded = [client.download(a, Path(grid.data_dir) / "obs-download") for a in artifacts[:2]]
    after = scrape(grid.metrics)

    assert value(after, "rtgrid_jobs_submitted_total", kind="contour") == \
        value(before, "rtgrid_jobs_submitted_total", kind="contour") + 1
    assert value(after, "rtgrid_jobs_finished_total", kind="contour", state="succeeded") == \
        value(before, "rtgrid_jobs_finished_total", kind="contour", state="succeeded") + 1
    assert value(after, "rtgrid_jobs", state="succeeded") == value(before, "rtgrid_jobs", state="succeeded") + 1
    assert value(during, "rtgrid_jobs", state="queued") + value(during, "rtgrid_jobs", state="running") >= 1
    assert value(after, "rtgrid_queue_depth") == 0
    # Two contour slabs and one merge, each timed into the histogram.
    for stage, shards in (("contour", 2), ("merge", 1)):
        count = "rtgrid_shard_duration_seconds_count"
        assert value(after, count, stage=stage, outcome="succeeded") - \
            value(before, count, stage=stage, outcome="succeeded") == shards
        assert value(after, "rtgrid_shard_duration_seconds_sum", stage=stage, outcome="succeeded") > \
            value(before, "rtgrid_shard_duration_seconds_sum", stage=stage, outcome="succeeded")
    assert value(after, "rtgrid_bytes_received_total", what="upload") - \
        value(before, "rtgrid_bytes_received_total", what="upload") == upload_bytes
    assert value(after, "rtgrid_bytes_sent_total", what="download") - \
        value(before, "rtgrid_bytes_sent_total", what="download") == sum(p.stat().st_size for p in downloaded)
    alive_seen = [v for (n, ls), v in after.items() if n == "rtgrid_agent_last_heartbeat_seconds"
                  and ("state", "alive") in ls]
    assert alive_seen and max(alive_seen) < 15, alive_seen

    # Heartbeats keep counting, on the master and on each agent's own metrics.
    agents = {name: address for name, address in grid.agent_metrics.items() if name in ("agent-a", "agent-b")}
    first = {name: scrape(address) for name, address in agents.items()}
    time.sleep(6.5)  # a little over three heartbeat intervals
    second = {name: scrape(address) for name, address in agents.items()}
    assert total(scrape(grid.metrics), "rtgrid_agent_heartbeats_total") > total(after, "rtgrid_agent_heartbeats_total")
    for name in agents:
        assert value(second[name], "rtgrid_agent_heartbeats_sent_total") > \
            value(first[name], "rtgrid_agent_heartbeats_sent_total")
        assert abs(time.time() - value(second[name], "rtgrid_agent_last_heartbeat_timestamp_seconds")) < 15
        assert value(second[name], "rtgrid_agent_registrations_total") >= 1

    # Structured logs: JSON lines, the job's lines carry its id, its shards' lines their ids.
    lines = [json.loads(line) for line in (grid.data_dir / "master.log").read_text().splitlines()
             if line.startswith("{")]
    mine = [line for line in lines if line.get("job_id") == job.job_id]
    assert any("queued" in line["msg"] for line in mine)
    shard_lines = [line for line in mine if line.get("shard_id") and "succeeded" in line["msg"]]
    assert len(shard_lines) == 3 and all(line["agent_id"].startswith("agent-") for line in shard_lines)
    assert all(line["component"] == "master" and line["level"] for line in mine)
