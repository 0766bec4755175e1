"""The job kinds the master knows, by name."""

from __future__ import annotations

from ..errors import InvalidArgument
from .base import JobKind
from .contour import ContourJob
from .plan import FullJob, PlanJob
from .predict import PredictJob
from .register import RegisterJob

KINDS: dict[str, JobKind] = {kind.name: kind for kind in (ContourJob(), PlanJob(), FullJob(), PredictJob(), RegisterJob())}


def get_kind(name: str) -> JobKind:
    try:
        return KINDS[name]
    except KeyError:
        raise InvalidArgument(f"unknown job kind {name!r}; known kinds: {', '.join(sorted(KINDS))}") from None
