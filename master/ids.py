"""Identifiers and clocks, one way for the whole master."""

from __future__ import annotations

import secrets
import time


def new_id(prefix: str) -> str:
    """A random id such as ``job-3f9c0a1b2c3d4e5f`` (64 random bits)."""
    return f"{prefix}-{secrets.token_hex(8)}"


def now_ms() -> int:
    return int(time.time() * 1000)
