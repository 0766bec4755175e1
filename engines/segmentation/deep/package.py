"""A model package on disk: ``weights.pt`` + ``card.json`` + ``sha256`` (content hash).

The hash is ``sha256(weights.pt bytes || card.json bytes)``; the grid records it with every
contour set it produces, so a result names the exact model that made it.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import torch
from torch import nn

from rtgrid.engines.errors import EngineError
from rtgrid.engines.segmentation.deep.card import ModelCard, ModelCardError
from rtgrid.engines.segmentation.deep.models import build_model

WEIGHTS_FILE = "weights.pt"
CARD_FILE = "card.json"
HASH_FILE = "sha256"


class ModelPackageError(EngineError, ValueError):
    """A model package is incomplete, corrupted, or does not match its card."""


def _content_hash(weights: bytes, card: bytes) -> str:
    digest = hashlib.sha256()
    digest.update(weights)
    digest.update(card)
    return digest.hexdigest()


def save_package(directory: str | Path, model: nn.Module, card: ModelCard) -> str:
    """Write weights, card and content hash.

    Parameters
    ----------
    directory : str or Path
        Created when absent; existing package files are replaced.
    model : torch.nn.Module
        A network built by :func:`build_model` from ``card.architecture`` and its kwargs.
    card : ModelCard
        The model card.

    Returns
    -------
    str
        The sha256 hex digest over the weights and card bytes.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    torch.save(state, buffer)
    weights = buffer.getvalue()
    card_bytes = card.to_json().encode("utf-8")
    content_hash = _content_hash(weights, card_bytes)
    (directory / WEIGHTS_FILE).write_bytes(weights)
    (directory / CARD_FILE).write_bytes(card_bytes)
    (directory / HASH_FILE).write_text(content_hash + "\n")
    return content_hash


def read_card(directory: str | Path) -> ModelCard:
    """Read and validate ``card.json`` of a package (no weights, no hash check)."""
    path = Path(directory) / CARD_FILE
    if not path.is_file():
        raise ModelPackageError(f"{path} is missing: not a model package")
    try:
        data = json.loads(path.read_text("utf-8"))
    except json.JSONDecodeError as error:
        raise ModelCardError(f"{path} is not valid JSON: {error}") from None
    return ModelCard.from_dict(data, source=str(path))


def load_package(directory: str | Path, device: str = "cpu") -> tuple[nn.Module, ModelCard]:
    """Load a package, verifying its content hash, and return the network in eval mode.

    Parameters
    ----------
    directory : str or Path
        A folder written by :func:`save_package`.
    device : str
        Torch device for the weights.

    Returns
    -------
    (torch.nn.Module, ModelCard)

    Raises
    ------
    ModelPackageError
        A file is missing, the hash does not match, or the weights do not fit the card's architecture.
    ModelCardError
        The card misses a field or holds an unusable value.
    UnknownArchitectureError
        The card names an architecture rtgrid cannot build.
    """
    directory = Path(directory)
    for name in (WEIGHTS_FILE, CARD_FILE, HASH_FILE):
        if not (directory / name).is_file():
            raise ModelPackageError(f"{directory / name} is missing: not a complete model package")
    weights = (directory / WEIGHTS_FILE).read_bytes()
    card_bytes = (directory / CARD_FILE).read_bytes()
    expected = (directory / HASH_FILE).read_text().strip()
    actual = _content_hash(weights, card_bytes)
    if actual != expected:
        raise ModelPackageError(
            f"{directory}: content hash {actual} does not match the recorded {expected}; "
            f"{WEIGHTS_FILE} or {CARD_FILE} changed after packaging"
        )
    card = read_card(directory)
    model = build_model(card.architecture, card.in_channels, card.n_classes, **card.architecture_kwargs)
    try:
        state = torch.load(io.BytesIO(weights), map_location=device, weights_only=True)
    except Exception as error:  # torch raises many types for a file that is not a state dict
        raise ModelPackageError(f"{directory / WEIGHTS_FILE} is not a readable torch state dict: {error}") from None
    if not isinstance(state, dict):
        raise ModelPackageError(f"{directory / WEIGHTS_FILE} holds a {type(state).__name__}, not a state dict")
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise ModelPackageError(
            f"{directory / WEIGHTS_FILE} does not fit architecture {card.architecture!r} "
            f"with {card.architecture_kwargs} and {card.n_classes} classes: {error}"
        ) from None
    return model.to(device).eval(), card


def package_hash(directory: str | Path) -> str:
    """The recorded content hash of a package."""
    path = Path(directory) / HASH_FILE
    if not path.is_file():
        raise ModelPackageError(f"{path} is missing: not a complete model package")
    return path.read_text().strip()
