"""Following a job live, shared by ``rtgrid watch`` and ``rtgrid demo``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .output import EXIT_JOB_FAILED, Format, as_dict, emit

if TYPE_CHECKING:
    from ..sdk import Client


def follow(client: "Client", job_id: str, fmt: Format) -> int:
    """Print a job's events until it ends; returns the exit code for its final state.

    Parameters
    ----------
    client : Client
        A connected SDK client.
    job_id : str
        The job to follow.
    fmt : Format
        ``json``: one event per line on stdout; ``text``: a progress bar per stage and a line per
        state change or log event.

    Returns
    -------
    int
        0 when the job succeeded, ``EXIT_JOB_FAILED`` otherwise.
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from rtgrid.protos.v1 import common_pb2

    from ..sdk import state_name

    final = common_pb2.JOB_STATE_UNSPECIFIED
    if fmt == Format.json:
        for event in client.watch(job_id):
            emit(fmt, as_dict(event), "")
            final = event.state
    else:
        columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:.0f}/{task.total:.0f}"),
                   TimeRemainingColumn())
        with Progress(*columns, transient=False) as progress:
            bars: dict[str, int] = {}
            for event in client.watch(job_id):
                final = event.state
                if event.type == common_pb2.EVENT_TYPE_PROGRESS and event.shards_total:
                    if event.stage not in bars:
                        bars[event.stage] = progress.add_task(event.stage, total=event.shards_total)
                    progress.update(bars[event.stage], completed=event.shards_done, total=event.shards_total)
                elif event.type != common_pb2.EVENT_TYPE_PROGRESS:
                    progress.console.print(f"[{state_name(event.state)}] {event.stage}: {event.message}")
    return 0 if final == common_pb2.JOB_STATE_SUCCEEDED else EXIT_JOB_FAILED
