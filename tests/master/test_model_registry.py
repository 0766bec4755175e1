"""The model registry: real packages in, verified, stored whole or not at all; resolved by name."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import grpc
import pytest
import torch

from rtgrid.engines.segmentation.deep.card import CardLabel, ModelCard
from rtgrid.engines.segmentation.deep.models import build_model
from rtgrid.engines.segmentation.deep.package import CARD_FILE, HASH_FILE, WEIGHTS_FILE, save_package
from rtgrid.master import models
from rtgrid.master.blobs import BlobStore
from rtgrid.master.errors import AlreadyExists, InvalidArgument, NotFound
from rtgrid.master.jobs.contour import model_hashes, resolve_models
from rtgrid.master.store.sqlite import SqliteStore

CARD = ModelCard(
    name="tiny", version="1", labels=(CardLabel(1, "heart", "Heart_DL"),), input_spacing_mm=(4.0, 4.0),
    hu_window=(-400.0, 600.0), architecture="unet2d", architecture_kwargs={"base_channels": 4, "depth": 2},
    in_channels=1, training_data={"cases": 0}, validation_metrics={"mean_dsc": 0.5}, licence="Apache-2.0",
)


@pytest.fixture
def registry(tmp_path):
    store = SqliteStore(tmp_path / "rtgrid.sqlite")
    yield store, BlobStore(tmp_path / "blobs")
    store.close()


def _package(tmp_path, card=CARD, name="pkg"):
    torch.manual_seed(0)
    model = build_model(card.architecture, 1, card.n_classes, **card.architecture_kwargs)
    folder = tmp_path / name
    save_package(folder, model, card)
    return folder


def _send(store, blobs, sha256: str, card: bytes, weights: bytes, announced: int | None = None, piece: int = 1000):
    receiver = models.PackageReceiver(store, blobs, sha256, card, len(weights) if announced is None else announced)
    try:
        for start in range(0, len(weights), piece):
            receiver.write(weights[start : start + piece])
        return receiver.finish()
    finally:
        receiver.discard()


def _files(folder):
    return (folder / HASH_FILE).read_text().strip(), (folder / CARD_FILE).read_bytes(), (folder / WEIGHTS_FILE).read_bytes()


def _rehash(weights: bytes, card: bytes) -> str:
    return hashlib.sha256(weights + card).hexdigest()


def test_register_list_resolve_and_fetch_back_byte_exact(registry, tmp_path):
    store, blobs = registry
    sha, card, weights = _files(_package(tmp_path))
    record = _send(store, blobs, sha, card, weights)
    assert (record.name, record.version, record.sha256, record.architecture) == ("tiny", "1", sha, "unet2d")
    # What an agent fetches rebuilds exactly the hashed files.
    assert blobs.read_bytes(record.weights_sha256) == weights and record.card_json.encode() == card
    assert _send(store, blobs, sha, card, weights) == record  # the same package again: idempotent
    assert [m.sha256 for m in store.list_models()] == [sha]
    assert models.resolve(store, "tiny").sha256 == sha == models.resolve(store, "tiny@1").sha256
    with pytest.raises(NotFound, match="no registered model 'tiny@2'; registered: tiny@1"):
        models.resolve(store, "tiny@2")
    # A contour job pins the exact package at submission.
    assert resolve_models(store, "tiny, tiny@1") == f"tiny@1:{sha}"
    assert model_hashes({"models": resolve_models(store, "tiny")}) == [sha]
    with pytest.raises(NotFound, match="'other'"):
        resolve_models(store, "tiny,other")


def test_newest_version_wins_and_a_name_version_clash_is_refused(registry, tmp_path):
    store, blobs = registry
    _send(store, blobs, *_files(_package(tmp_path)))
    newer = _files(_package(tmp_path, dataclasses.replace(CARD, version="2"), "v2"))
    _send(store, blobs, *newer)
    assert models.resolve(store, "tiny").version == "2"
    # Same name and version, other weights: refused, nothing changes.
    other = _package(tmp_path, dataclasses.replace(CARD, licence="other"), "clash")
    with pytest.raises(AlreadyExists, match="tiny@1 is already registered"):
        _send(store, blobs, *_files(other))
    assert len(store.list_models()) == 2


def _refused(store, blobs, match, *args, **kwargs):
    before = blobs.blob_count()
    with pytest.raises(InvalidArgument, match=match) as info:
        _send(store, blobs, *args, **kwargs)
    assert info.value.status == grpc.StatusCode.INVALID_ARGUMENT
    assert store.list_models() == [] and blobs.blob_count() == before
    assert not any(blobs.partial_dir.iterdir())  # nothing half-stored


def test_bad_packages_are_refused_naming_the_problem(registry, tmp_path):
    store, blobs = registry
    sha, card, weights = _files(_package(tmp_path))
    flipped = weights[:-100] + bytes([weights[-100] ^ 0xFF]) + weights[-99:]
    _refused(store, blobs, "content hash .* does not match", sha, card, flipped)
    _refused(store, blobs, "ended after", sha, card, weights[:-10], announced=len(weights))
    _refused(store, blobs, "exceed the announced", sha, card, weights, announced=len(weights) - 1)
    _refused(store, blobs, "not a sha256", "abc", card, weights)
    # Correctly hashed, but not usable: unknown architecture, garbage weights, weights of another net.
    alien = json.loads(card)
    alien["architecture"] = "vit_huge"
    alien_card = json.dumps(alien).encode()
    _refused(store, blobs, "unknown architecture 'vit_huge'", _rehash(weights, alien_card), alien_card, weights)
    garbage = b"not a torch file" * 100
    _refused(store, blobs, "not a readable torch state dict", _rehash(garbage, card), card, garbage)
    bigger = json.loads(card)
    bigger["architecture_kwargs"]["base_channels"] = 8
    bigger_card = json.dumps(bigger).encode()
    _refused(store, blobs, "does not fit architecture", _rehash(weights, bigger_card), bigger_card, weights)
    no_labels = json.loads(card)
    del no_labels["labels"]
    bad_card = json.dumps(no_labels).encode()
    _refused(store, blobs, "missing field", _rehash(weights, bad_card), bad_card, weights)
