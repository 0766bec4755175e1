"""The registry of segmentation model packages: register (verified), resolve by name, list.

A package is ``weights.pt`` + ``card.json`` + its content hash (see
``rtgrid.engines.segmentation.deep.package``). The master keeps the weights as a blob and the
card byte for byte in the store, so an agent that fetches the package by hash rebuilds exactly
the files that were hashed. A package is stored only after it loads: hash, card, architecture
and weights are all checked first, so nothing half-valid is ever registered.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

from rtgrid.engines.errors import EngineError
from rtgrid.engines.segmentation.deep.builtin import builtin_packages
from rtgrid.engines.segmentation.deep.card import ModelCard
from rtgrid.engines.segmentation.deep.package import CARD_FILE, HASH_FILE, WEIGHTS_FILE, load_package

from .blobs import BlobStore
from .errors import AlreadyExists, InvalidArgument, NotFound
from .ids import new_id, now_ms
from .store.base import Store
from .store.records import ModelRecord

# Larger than any 2-D network rtgrid trains (the built-in head-and-neck model is under 2 MB), small enough for a master.
MAX_MODEL_BYTES = 1 << 30
MAX_CARD_BYTES = 1 << 20


def _check_sha256(sha256: str) -> str:
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise InvalidArgument(f"model package hash {sha256!r} is not a sha256 hex digest")
    return sha256


def verify_package(card_bytes: bytes, weights_path: Path, sha256: str) -> ModelCard:
    """Load the package as an agent would (hash, card, architecture, weights) and return its card.

    Raises
    ------
    InvalidArgument
        Naming what is wrong: hash mismatch, a bad card, an unknown architecture, weights that
        are not a state dict or do not fit the architecture.
    """
    with tempfile.TemporaryDirectory(prefix="rtgrid-model-check-") as tmp:
        folder = Path(tmp)
        (folder / CARD_FILE).write_bytes(card_bytes)
        (folder / WEIGHTS_FILE).symlink_to(weights_path.resolve())
        (folder / HASH_FILE).write_text(sha256 + "\n")
        try:
            _, card = load_package(folder)
        except EngineError as exc:  # package, card, architecture
            # The temporary folder's name means nothing to the operator.
            raise InvalidArgument(f"invalid model package: {str(exc).replace(str(folder), 'package')}") from None
    return card


class PackageReceiver:
    """Receives one package (its weights in pieces), verifies all of it, then stores it.

    Parameters
    ----------
    sha256 : str
        The package content hash the sender claims.
    card_bytes : bytes
        ``card.json`` as packaged.
    weights_bytes : int
        The announced size of ``weights.pt``.

    Raises
    ------
    InvalidArgument
        Bad hash or sizes (here), or a bad card, architecture or weights (in :meth:`finish`).
    """

    def __init__(self, store: Store, blobs: BlobStore, sha256: str, card_bytes: bytes, weights_bytes: int) -> None:
        _check_sha256(sha256)
        if not 0 < weights_bytes <= MAX_MODEL_BYTES:
            raise InvalidArgument(f"model weights of {weights_bytes} bytes: expected 1 to {MAX_MODEL_BYTES} bytes")
        if not 0 < len(card_bytes) <= MAX_CARD_BYTES:
            raise InvalidArgument(f"model card of {len(card_bytes)} bytes: expected 1 to {MAX_CARD_BYTES} bytes")
        try:
            card_bytes.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidArgument(f"model card is not UTF-8 text: {exc}") from None
        self.store, self.blobs = store, blobs
        self.sha256, self.card_bytes, self.weights_bytes = sha256, card_bytes, weights_bytes
        self._partial = blobs.partial_path(new_id("model").replace("-", ""))
        self._file = self._partial.open("wb")
        self._digest = hashlib.sha256()
        self._received = 0

    def write(self, piece: bytes) -> None:
        """Append the next bytes of ``weights.pt``."""
        self._received += len(piece)
        if self._received > self.weights_bytes:
            raise InvalidArgument(f"model weights exceed the announced {self.weights_bytes} bytes")
        self._digest.update(piece)
        self._file.write(piece)

    def finish(self) -> ModelRecord:
        """Verify and store the package.

        Returns
        -------
        ModelRecord
            The new record, or the existing one when this exact package is already registered.

        Raises
        ------
        InvalidArgument
            Missing bytes, or the package does not load (see :func:`verify_package`).
        AlreadyExists
            Another package is registered under the same name and version.
        """
        self._file.close()
        if self._received != self.weights_bytes:
            raise InvalidArgument(f"model weights ended after {self._received} of the announced {self.weights_bytes} bytes")
        card = verify_package(self.card_bytes, self._partial, self.sha256)
        existing = self.store.get_model(self.sha256)
        if existing is not None:
            return existing
        clash = self.store.find_models(card.name, card.version)
        if clash:
            raise AlreadyExists(
                f"model {card.name}@{card.version} is already registered as {clash[0].sha256}; "
                "give the new package another version"
            )
        record = ModelRecord(self.sha256, card.name, card.version, card.architecture, self.card_bytes.decode("utf-8"),
                             self._digest.hexdigest(), self.weights_bytes, now_ms())
        self.blobs.adopt(self._partial, record.weights_sha256)
        try:
            self.store.add_model(record)
        except KeyError as exc:  # a concurrent registration of the same name and version won
            raise AlreadyExists(str(exc.args[0])) from None
        return record

    def discard(self) -> None:
        """Drop what was received (after :meth:`finish` too: the weights were moved away)."""
        self._file.close()
        self._partial.unlink(missing_ok=True)


def register_package_dir(store: Store, blobs: BlobStore, directory: Path) -> ModelRecord:
    """Register a package folder (verified like an upload; the existing record if already there).

    Raises
    ------
    InvalidArgument, AlreadyExists
        As :meth:`PackageReceiver.finish`.
    """
    weights = (directory / WEIGHTS_FILE).read_bytes()
    receiver = PackageReceiver(store, blobs, (directory / HASH_FILE).read_text().strip(),
                               (directory / CARD_FILE).read_bytes(), len(weights))
    try:
        receiver.write(weights)
        return receiver.finish()
    finally:
        receiver.discard()


def register_builtin_models(store: Store, blobs: BlobStore) -> list[ModelRecord]:
    """On an empty registry, register the packages that ship with rtgrid; otherwise nothing.

    Returns
    -------
    list[ModelRecord]
        The records registered now (empty when the registry already held a model).
    """
    if store.list_models():
        return []
    return [register_package_dir(store, blobs, directory) for directory in builtin_packages()]


def resolve(store: Store, spec: str) -> ModelRecord:
    """``NAME`` (its newest registration) or ``NAME@VERSION`` to the registered package.

    Raises
    ------
    NotFound
        No such model (the message lists the registered ones).
    """
    name, _, version = spec.strip().partition("@")
    found = store.find_models(name, version) if name else []
    if not found:
        known = ", ".join(sorted({f"{m.name}@{m.version}" for m in store.list_models()})) or "none"
        raise NotFound(f"no registered model {spec!r}; registered: {known}")
    return found[0]


def get(store: Store, sha256: str) -> ModelRecord:
    model = store.get_model(_check_sha256(sha256))
    if model is None:
        raise NotFound(f"no registered model package {sha256}")
    return model


def card_of(model: ModelRecord) -> ModelCard:
    """The card of a registered (hence already verified) package."""
    return ModelCard.from_dict(json.loads(model.card_json), source=f"model {model.name}@{model.version}")
