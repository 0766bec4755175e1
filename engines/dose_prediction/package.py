"""A dose model package: ``weights.pt`` + ``card.json`` + ``sha256``, as segmentation models are.

The hash is ``sha256(weights.pt bytes || card.json bytes)``; a predicted RTDOSE names it, so a
result always names the exact weights that made it. The card records the architecture, the
training data and its citation, the split, the validation scores, the inputs and the licence.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import torch

from rtgrid.engines.errors import EngineError

from .model import DoseUNet

WEIGHTS_FILE = "weights.pt"
CARD_FILE = "card.json"
HASH_FILE = "sha256"
CARD_FIELDS = ("name", "version", "architecture", "inputs", "training_data", "citation", "licence", "split", "validation")
BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"
BUILTIN_HN = BUILTIN_DIR / "rtgrid-hn-dose"
"""The shipped head-and-neck model (``make model-dose``)."""


class DosePackageError(EngineError, ValueError):
    """A dose model package is incomplete, corrupted, or its weights do not fit its card."""


def _content_hash(weights: bytes, card: bytes) -> str:
    digest = hashlib.sha256()
    digest.update(weights)
    digest.update(card)
    return digest.hexdigest()


def save_dose_package(directory: str | Path, model: DoseUNet, card: dict[str, Any]) -> str:
    """Write weights, card and content hash; returns the hash.

    Raises
    ------
    DosePackageError
        The card lacks a field of :data:`CARD_FIELDS`.
    """
    missing = [f for f in CARD_FIELDS if f not in card]
    if missing:
        raise DosePackageError(f"the card lacks {', '.join(missing)}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    # float16 halves the package; the weights' precision does not limit a dose model's accuracy.
    torch.save({k: (v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu()).contiguous()
                for k, v in model.state_dict().items()}, buffer)
    weights = buffer.getvalue()
    card_bytes = (json.dumps(card, indent=2, sort_keys=True) + "\n").encode("utf-8")
    content_hash = _content_hash(weights, card_bytes)
    (directory / WEIGHTS_FILE).write_bytes(weights)
    (directory / CARD_FILE).write_bytes(card_bytes)
    (directory / HASH_FILE).write_text(content_hash + "\n")
    return content_hash


def load_dose_package(directory: str | Path = BUILTIN_HN, device: str = "cpu") -> tuple[DoseUNet, dict[str, Any], str]:
    """Load a package, verifying its hash; the network comes back in eval mode, float32.

    Returns
    -------
    (DoseUNet, dict, str)
        The network, the card, the content hash.

    Raises
    ------
    DosePackageError
        A file is missing, the hash does not match, the card is unreadable, or the weights do
        not fit the card's architecture.
    """
    directory = Path(directory)
    for name in (WEIGHTS_FILE, CARD_FILE, HASH_FILE):
        if not (directory / name).is_file():
            raise DosePackageError(f"{directory / name} is missing: not a complete dose model package")
    weights = (directory / WEIGHTS_FILE).read_bytes()
    card_bytes = (directory / CARD_FILE).read_bytes()
    expected = (directory / HASH_FILE).read_text().strip()
    actual = _content_hash(weights, card_bytes)
    if actual != expected:
        raise DosePackageError(f"{directory}: content hash {actual} does not match the recorded {expected}; "
                               f"{WEIGHTS_FILE} or {CARD_FILE} changed after packaging")
    try:
        card = json.loads(card_bytes)
        model = DoseUNet(**card["architecture"])
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise DosePackageError(f"{directory / CARD_FILE}: unusable card ({error})") from None
    try:
        state = torch.load(io.BytesIO(weights), map_location=device, weights_only=True)
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except Exception as error:  # torch raises many types for weights that do not fit
        raise DosePackageError(f"{directory / WEIGHTS_FILE} does not fit the card's architecture: {error}") from None
    return model.to(device).eval(), card, actual
