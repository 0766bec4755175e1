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
from rtgrid.engines.phantom.plan_inputs import PHANTOM_ORDER, write_plan_inputs

__all__ = [
    "DEFAULT_SHAPE",
    "DEFAULT_SPACING_MM",
    "LABEL_NAMES",
    "Phantom",
    "PhantomCase",
    "make_phantom",
    "read_ground_truth",
    "write_phantom_case",
    "PHANTOM_ORDER",
    "write_plan_inputs",
]
