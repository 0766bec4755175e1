"""Per-hospital API tokens: random, shown once, stored only as a sha256 digest.

A token is 256 random bits (``secrets``), so a plain sha256 is enough: there is nothing to guess
that a slow KDF would protect, and a digest lookup stays one indexed query per call.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from collections.abc import Callable

from ..errors import AlreadyExists, InvalidArgument, NotFound
from ..ids import now_ms
from ..store.base import Store
from ..store.records import HospitalRecord

TOKEN_PREFIX = "rtg_"
TOKEN_BYTES = 32
TOKEN_CACHE_S = 30.0
"""How long a live token found in the store is believed without asking it again (see TokenCache)."""
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


class TokenCache:
    """The live hospitals of tokens the store has shown, believed for ``held_s`` seconds.

    Every hospital call is admitted by its token. Held here, the admission is a dict lookup on the
    event loop instead of a thread hop and a store read that waited behind the writes of fifty
    uploads. Tokens change only through this master (:func:`add_hospital` and
    :func:`revoke_hospital` in the admin service), which calls :meth:`forget` at once: a revoked
    token is refused from the next call on. ``held_s`` bounds how long a change made to the store
    some other way goes unseen. Unknown tokens are never held: each is asked of the store again.

    Parameters
    ----------
    store : Store
        Where the token digests live.
    held_s : float
        Seconds a found token is believed.
    clock : callable
        Monotonic seconds (tests pass their own).
    """

    def __init__(self, store: Store, held_s: float = TOKEN_CACHE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store, self.held_s, self.clock = store, held_s, clock
        self._held: dict[str, tuple[HospitalRecord, float]] = {}
        self._forgotten = 0  # times forgotten: a lookup that overlapped one holds nothing
        self._lock = threading.Lock()

    def cached(self, token: str) -> HospitalRecord | None:
        """The hospital of ``token`` if held and still believed; ``None``: ask :meth:`lookup`."""
        with self._lock:
            found = self._held.get(token_digest(token))
        if found is None or self.clock() - found[1] > self.held_s:
            return None
        return found[0]

    def lookup(self, token: str) -> HospitalRecord | None:
        """:func:`hospital_for_token` (a store read: call it in a thread); a live hospital is held."""
        with self._lock:
            forgotten = self._forgotten
        hospital = hospital_for_token(self.store, token)
        with self._lock:
            # A revocation committed after the read above (and forgotten since) must not be
            # undone by holding what the read saw.
            if hospital is not None and forgotten == self._forgotten:
                self._held[hospital.token_sha256] = (hospital, self.clock())
        return hospital

    def forget(self) -> None:
        """Drop everything held (after a token was issued or revoked)."""
        with self._lock:
            self._held.clear()
            self._forgotten += 1
