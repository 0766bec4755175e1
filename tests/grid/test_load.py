"""A small version of ``make bench-load`` on the session grid: hospitals, each its own tenant with
its own token, upload, submit and watch at once (contours, and a plan on a contour job); every job
finishes and every watcher sees every event in order (the run that found the JobContext deadlock)."""

from __future__ import annotations

import argparse

from bench.load import PLAN_PARAMS, PLAN_SHAPE, PLAN_SPACING_MM, JobSpec, goals, summarize, wave
from rtgrid.engines.phantom import PHANTOM_ORDER, make_phantom, write_phantom_case, write_plan_inputs

HOSPITALS = 8
SHAPE, SPACING = (8, 48, 48), (8.0, 8.0, 6.0)


def test_hospitals_at_once(grid, tmp_path):
    specs = [JobSpec("contour-small", "contour",
                     (write_phantom_case(tmp_path / f"h{i}", shape=SHAPE, spacing_mm=SPACING, seed=20 + i).ct_dir,))
             for i in range(HOSPITALS - 1)]
    case = write_phantom_case(tmp_path / "plan", shape=PLAN_SHAPE, spacing_mm=PLAN_SPACING_MM, seed=4)
    rtstruct, _ = write_plan_inputs(case, make_phantom(PLAN_SHAPE, PLAN_SPACING_MM, seed=4), tmp_path / "manual")
    specs.append(JobSpec("plan", "plan", (case.ct_dir, rtstruct), {"order": PHANTOM_ORDER, **PLAN_PARAMS},
                         contours_first=True))
    with grid.operator_client() as operator:  # each its own tenant, with its own token
        tokens = [operator.add_hospital(f"load-{i}").token for i in range(HOSPITALS)]
    runs, wave_s = wave(grid.target, grid.pki.ca if grid.pki else None, tokens, specs,
                        argparse.Namespace(job_timeout=240.0, wave_timeout=300.0, client_processes=2))
    figures = summarize(runs, wave_s)
    jobs = HOSPITALS + 1  # the plan hospital's contour job, then its plan on those contours
    assert figures["jobs_total"] == jobs and figures["jobs_succeeded"] == jobs, figures
    assert figures["events_in_order"] == jobs, figures
    assert figures["by_kind"]["plan"]["succeeded"] == 1 and figures["by_kind"]["plan:contour"]["succeeded"] == 1
    assert all(j.first_event_s > 0 and j.events >= 4 for r in runs for j in r.jobs), figures
    met = goals(figures, soak=False)
    assert met["every_job_succeeded"] and met["every_event_in_order"] and met["master_memory_flat"] is None
