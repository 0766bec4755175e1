"""A small version of ``make bench-load`` on the session grid: hospitals upload, submit and watch
at once; every job finishes and every watcher sees every event in order (the run that found the
JobContext deadlock)."""

from __future__ import annotations

import argparse

from bench.load import summarize, wave
from rtgrid.engines.phantom import write_phantom_case

HOSPITALS = 8
SHAPE, SPACING = (8, 48, 48), (8.0, 8.0, 6.0)


def test_hospitals_at_once(grid, tmp_path):
    cts = [write_phantom_case(tmp_path / f"h{i}", shape=SHAPE, spacing_mm=SPACING, seed=20 + i).ct_dir
           for i in range(HOSPITALS)]
    with grid.operator_client() as operator:  # each its own tenant, with its own token
        tokens = [operator.add_hospital(f"load-{i}").token for i in range(HOSPITALS)]
    runs, wave_s = wave(lambda i: grid.hospital_client(tokens[i]), cts,
                        argparse.Namespace(job_timeout=240.0, wave_timeout=300.0))
    figures = summarize(runs, wave_s)
    assert figures["jobs_succeeded"] == HOSPITALS, figures
    assert figures["events_in_order"] == HOSPITALS, figures
    assert all(r.first_event_s > 0 and r.events >= 4 for r in runs), figures
