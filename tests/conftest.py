"""Fixtures shared by all tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The Makefile exports these; a bare `pytest` needs them too, or Ray binds (and its worker nodes
# look for the head on) the machine's network address instead of 127.0.0.1 and the grid tests hang.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TMPDIR", "/tmp/rtgrid-ray")
Path(os.environ["RAY_TMPDIR"]).mkdir(parents=True, exist_ok=True)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def require_shared(relative: str) -> Path:
    """Path to ``../shared/data/<relative>``; skip when absent, but never in CI (CI has it)."""
    path = SHARED_DATA / relative
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{path} is missing in CI: ../shared/data must sit beside the repository")
        pytest.skip(f"needs {path} (../shared/data beside the repository)")
    return path


@pytest.fixture(scope="session")
def totalseg_dir() -> Path:
    """The real JPEG 2000 CT series and its reference segmentation."""
    return require_shared("totalseg-example")


@pytest.fixture(scope="session")
def dicompyler_dir() -> Path:
    """A real breast IMRT plan from a commercial planning system."""
    return require_shared("dicompyler-example")
