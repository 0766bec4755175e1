"""Fixtures shared by all tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
