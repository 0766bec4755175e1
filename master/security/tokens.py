"""Per-hospital API tokens: random, shown once, stored only as a sha256 digest.

A token is 256 random bits (``secrets``), so a plain sha256 is enough: there is nothing to guess
that a slow KDF would protect, and a digest lookup stays one indexed query per call.
"""

from __future__ import annotations

import hashlib
import re
import secrets

from ..errors import AlreadyExists, InvalidArgument, NotFound
from ..ids import now_ms
from ..store.base import Store
from ..store.records import HospitalRecord

TOKEN_PREFIX = "rtg_"
TOKEN_BYTES = 32
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def token_digest(token: str) -> str:
    """The sha256 hex digest under which a token is stored."""
    return hashlib.sha256(token.encode()).hexdigest()


def add_hospital(store: Store, name: str) -> tuple[HospitalRecord, str]:
    """Create a hospital and its token; returns the record and the token (its only appearance)."""
    if not _NAME.match(name):
        raise InvalidArgument(f"hospital name {name!r}: 1-64 letters, digits, '.', '_' or '-', starting alphanumeric")
    token = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
    with store.transaction():
        existing = store.get_hospital(name)
        if existing is not None and not existing.revoked_ms:
            raise AlreadyExists(f"hospital {name!r} has a live token; revoke it first to issue a new one")
        record = HospitalRecord(name, token_digest(token), now_ms())
        store.update_hospital(record)  # a revoked hospital gets a fresh token, its cases stay its own
    return record, token


def revoke_hospital(store: Store, name: str) -> HospitalRecord:
    """Revoke a hospital's token at once; its cases stay (an operator may still see them)."""
    with store.transaction():
        record = store.get_hospital(name)
        if record is None:
            raise NotFound(f"no hospital {name!r}")
        if not record.revoked_ms:
            record.revoked_ms = now_ms()
            store.update_hospital(record)
    return record


def hospital_for_token(store: Store, token: str) -> HospitalRecord | None:
    """The live hospital holding ``token``, or None (unknown or revoked)."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    return store.find_hospital_by_token(token_digest(token))
