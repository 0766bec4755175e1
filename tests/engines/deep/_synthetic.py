"""Small analytic CTs for segmentation tests (no shared data needed)."""

from __future__ import annotations

import numpy as np

from rtgrid.engines.imaging.volume import Volume


def ellipse_ct(seed: int, nz: int = 6, n: int = 48, spacing_mm=(2.0, 2.0, 3.0)) -> tuple[Volume, Volume]:
    """A body ellipse (0 HU) with an 'organ' ellipse (250 HU, label 1) and a 'bone' disc (700 HU, label 2)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:nz, :n, :n].astype(float)
    hu = np.full((nz, n, n), -1000.0)
    labels = np.zeros((nz, n, n), np.uint8)
    body = ((y - n / 2) / (n * 0.42)) ** 2 + ((x - n / 2) / (n * 0.45)) ** 2 <= 1
    hu[body] = 0
    cy, cx = n / 2 + rng.uniform(-2, 2), n * 0.35 + rng.uniform(-2, 2)
    organ = ((y - cy) / 8) ** 2 + ((x - cx) / 6) ** 2 <= 1
    hu[organ], labels[organ] = 250, 1
    bone = ((y - n / 2) / 5) ** 2 + ((x - n * 0.68) / 5) ** 2 <= 1
    hu[bone], labels[bone] = 700, 2
    hu += rng.normal(0, 10, hu.shape)
    return Volume(hu.astype(np.float32), (0, 0, 0), spacing_mm), Volume(labels, (0, 0, 0), spacing_mm)
