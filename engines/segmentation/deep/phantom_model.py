"""A small model of the digital phantom's lungs and bones, trained in seconds on the CPU.

Not a clinical model: it exists so the grid's deep path (registry, warm actors, RTSTRUCT merge)
can be shown and tested on a fresh machine in seconds, without the shared data.
Trained on phantoms whose CT noise differs from the demo patient's (seeds 11 and 12).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from rtgrid.engines.phantom.digital_patient import make_phantom
from rtgrid.engines.segmentation.deep.augment import AugmentConfig
from rtgrid.engines.segmentation.deep.training import ClassSpec, TrainCase, TrainConfig, TrainResult, train_segmentation

PHANTOM_MODEL_CONFIG = TrainConfig(
    name="rtgrid-phantom",
    version="0.1.0",
    # Structures a small network tells apart by local contrast (the heart is not: blood and muscle
    # share their HU, so it needs a field of view this model does not have).
    # Both lungs make one class (the label mapping merges sources); bones are many components.
    classes=(ClassSpec("lungs", "Lungs_DL", ("Lung_L", "Lung_R"), largest_component=False),
             ClassSpec("bones", "Bones_DL", ("Bones",), largest_component=False)),
    architecture="unet2d",
    architecture_kwargs={"base_channels": 8, "depth": 3},
    input_spacing_mm=(3.0, 3.0),
    hu_window=(-400.0, 600.0),
    patch_size=(64, 64),
    batch_size=4,
    iterations_per_epoch=12,
    # 3 epochs left the lungs at DSC 0.17-0.79 from run to run (scipy 1.17, torch 2.13): 8 give
    # 0.93 on the grid test's phantom in about 20 s on one core.
    max_epochs=8,
    learning_rate=5e-3,
    early_stopping_patience=5,
    foreground_fraction=0.7,
    augment=AugmentConfig(probability=0.5, rotation_deg=5.0, scale_range=(0.95, 1.05), translation_mm=8.0),
    seed=0,
    licence="Apache-2.0; trained on the rtgrid digital phantom only",
)
PHANTOM_SHAPE = (12, 128, 128)
PHANTOM_SPACING_MM = (3.0, 3.0, 3.0)


def train_phantom_model(out_dir: str | Path, *, device: str = "cpu", version: str = "") -> TrainResult:
    """Train :data:`PHANTOM_MODEL_CONFIG` on two noise realisations of the phantom.

    Parameters
    ----------
    out_dir : str or Path
        Receives the checkpoint and ``package/``.
    device : str
        ``"cpu"`` or ``"cuda"``.
    version : str
        Another version string than the config's (e.g. to register a second package).

    Returns
    -------
    TrainResult
    """
    config = replace(PHANTOM_MODEL_CONFIG, version=version) if version else PHANTOM_MODEL_CONFIG
    cases = []
    for seed in (11, 12):
        phantom = make_phantom(PHANTOM_SHAPE, PHANTOM_SPACING_MM, seed=seed)
        cases.append(TrainCase(f"rtgrid-phantom-seed{seed}", phantom.ct, phantom.labels))
    return train_segmentation(cases, config, out_dir, device=device)
