"""Model packages that ship with rtgrid, each in its own folder (``weights.pt``, ``card.json``,
``sha256``); ``train/`` holds the configurations that trained them (``make model-hn``), and
``comparison/`` the networks they were compared with (scored by ``make bench-seg``, never registered).

A master registers these packages when its model registry is empty (``rtgrid up`` on a fresh grid).
"""

from __future__ import annotations

from pathlib import Path

from rtgrid.engines.segmentation.deep.package import CARD_FILE, HASH_FILE, WEIGHTS_FILE

BUILTIN_DIR = Path(__file__).resolve().parent
HN_OAR_PACKAGE = BUILTIN_DIR / "rtgrid-hn-oar"
"""The head-and-neck organ-at-risk model trained on the OpenKBP patients."""


def builtin_packages() -> list[Path]:
    """The complete package folders shipped with rtgrid, sorted by name."""
    return sorted(
        p for p in BUILTIN_DIR.iterdir()
        if p.is_dir() and all((p / name).is_file() for name in (WEIGHTS_FILE, CARD_FILE, HASH_FILE))
    )
