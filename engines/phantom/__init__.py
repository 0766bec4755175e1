"""Digital phantom patients with exact ground truth (the demo patient of a fresh install)."""

from rtgrid.engines.phantom.digital_patient import (
    DEFAULT_SHAPE,
    DEFAULT_SPACING_MM,
    LABEL_NAMES,
    Phantom,
    PhantomCase,
    make_phantom,
    read_ground_truth,
    write_phantom_case,
)

__all__ = [
    "DEFAULT_SHAPE",
    "DEFAULT_SPACING_MM",
    "LABEL_NAMES",
    "Phantom",
    "PhantomCase",
    "make_phantom",
    "read_ground_truth",
    "write_phantom_case",
]
