"""The one logger setup of rtgrid's processes (master and agent): text lines or JSON lines.

It lives here because both the master and the agent may import ``engines`` (and neither may
import the other). JSON lines carry the job, shard and agent ids that a log call passes as
``extra={"job_id": ..., "shard_id": ..., "agent_id": ...}``, so an operator can filter one job's
story across processes.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone

LOG_FORMATS = ("text", "json")
# Record attributes copied into a JSON line when a log call sets them.
CONTEXT_FIELDS = ("job_id", "shard_id", "agent_id", "case_id")


class JsonLinesFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, component, logger, message, ids."""

    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "component": self.component,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        line.update({k: getattr(record, k) for k in CONTEXT_FIELDS if getattr(record, k, None)})
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure_logging(component: str, log_format: str = "text", level: int = logging.INFO) -> None:
    """Send the process's logs to stderr as text or JSON lines.

    Parameters
    ----------
    component : str
        ``master`` or ``agent``: written into every line.
    log_format : str
        ``text`` (human-readable) or ``json`` (one JSON object per line).
    level : int
        The root logger's level.

    Raises
    ------
    ValueError
        An unknown ``log_format``.
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format {log_format!r} is not one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonLinesFormatter(component))
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s {component} %(levelname)s %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
