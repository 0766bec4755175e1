"""The one logger setup: JSON lines carry the ids a log call passes; text stays readable."""

from __future__ import annotations

import json
import logging

import pytest

from rtgrid.engines.logsetup import configure_logging


@pytest.fixture
def root_logger_restored():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_carry_ids(capsys, root_logger_restored):
    configure_logging("agent", "json")
    logging.getLogger("rtgrid.test").warning("shard %s done", "s-1", extra={"job_id": "job-1", "shard_id": "s-1"})
    logging.getLogger("rtgrid.test").info("plain")
    first, second = (json.loads(line) for line in capsys.readouterr().err.splitlines()[-2:])
    assert first["msg"] == "shard s-1 done" and first["job_id"] == "job-1" and first["shard_id"] == "s-1"
    assert first["level"] == "warning" and first["component"] == "agent" and first["ts"].endswith("+00:00")
    assert "job_id" not in second and second["msg"] == "plain"


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="xml"):
        configure_logging("master", "xml")
