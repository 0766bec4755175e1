"""Training a 2-D segmentation model on a department's own CTs and label maps.

Cases are CT volumes with label maps (or per-structure masks) on the same grid. A label-mapping
config turns source labels (names or ids, e.g. TotalSegmentator's or an RTSTRUCT's ROI names)
into the model's classes. Slices are oriented, HU-windowed and resampled to the card's in-plane
spacing; training draws random patches (half of them centred on foreground), augments them,
and minimises Dice + cross-entropy with Adam and ReduceLROnPlateau. After each epoch the
validation cases are segmented whole and scored by DSC; the best epoch's weights are scored
once more in full (DSC, Jaccard, HD95, ASD per class) and become the model package, with those
metrics in its card. A checkpoint after every epoch makes training resumable; all randomness
derives from ``(seed, epoch)``, so a resumed run gives the same weights as an uninterrupted one
on CPU.

Partial labels: a case knows a class when it names one of the class's sources (a mask of that
name, or a label-map value named so; a class given by label value is always known). A class a
case does not know was not contoured there: it is left out of that case's Dice term, and its
pixels count as background-or-that-class in the cross-entropy (the marginal loss of Shi et al.,
Med. Image Anal. 2021), never as background.

On CUDA the forward pass runs under autocast (bf16 where supported, else fp16 with a gradient
scaler); batches are drawn by a background thread on every device, in the same order as in the
foreground, so the weights do not depend on the thread, and augmented there on the CPU, on the
GPU on CUDA.
"""

from __future__ import annotations

import hashlib
import json
import math
import queue
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rtgrid.engines.parallel import ordered_imap
from rtgrid.engines.errors import EngineError
from rtgrid.engines.imaging.volume import Volume
from rtgrid.engines.segmentation.deep.augment import AugmentConfig, augment_batch
from rtgrid.engines.segmentation.deep.card import CardLabel, ModelCard
from rtgrid.engines.segmentation.deep.models import build_model
from rtgrid.engines.segmentation.deep.package import load_package, package_hash, save_package
from rtgrid.engines.segmentation.deep.preprocessing import (
    model_grid_shape,
    resample_images,
    resample_labels,
    to_standard_axial,
    window_hu,
)
from rtgrid.engines.segmentation.metrics import compare_masks

CHECKPOINT_FILE = "checkpoint.pt"
PACKAGE_DIR = "package"


class TrainingDataError(EngineError, ValueError):
    """A training case or the label mapping cannot be used."""


class TrainingResumeError(EngineError, RuntimeError):
    """A checkpoint exists but belongs to a different configuration."""


@dataclass(frozen=True)
class ClassSpec:
    """One model class and the source labels that make it.

    Attributes
    ----------
    name : str
        Model class name.
    rtstruct_name : str
        ROIName in an RTSTRUCT.
    sources : tuple of (str or int)
        Source label names or ids merged into this class.
    roi_type : str
        RTROIInterpretedType.
    largest_component : bool
        Keep only the largest 3-D component in post-processing.
    lr_partner : str
        Class this one becomes under a left-right flip (e.g. ``kidney_left`` ↔ ``kidney_right``).
    """

    name: str
    rtstruct_name: str
    sources: tuple[str | int, ...]
    roi_type: str = "ORGAN"
    largest_component: bool = True
    lr_partner: str = ""


@dataclass(frozen=True)
class TrainCase:
    """A CT with its reference labels.

    Attributes
    ----------
    case_id : str
        Identifier (used for the validation split and the card's data summary).
    ct : Volume
        HU volume.
    labels : Volume or mapping of str to np.ndarray
        A label map on the CT's grid (values named by ``label_names``), or ``{source name: mask}``
        with masks shaped like ``ct.voxels``.
    label_names : mapping of int to str
        Names of label-map values (not needed for masks, nor when sources are given as ids).
    """

    case_id: str
    ct: Volume
    labels: Volume | Mapping[str, np.ndarray]
    label_names: Mapping[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainConfig:
    """What to train and how.

    ``input_spacing_mm`` is ``(column, row)`` mm; ``patch_size`` is ``(rows, columns)`` pixels
    of the model grid; an epoch is ``iterations_per_epoch`` batches. Validation uses the cases
    in ``validation_case_ids``, or else the last ``validation_fraction`` of the cases (at least
    one); with a single case, its last ``validation_fraction`` of slices. The per-epoch model
    selection scores every ``validation_slice_step``-th slice (an unbiased DSC estimate at a
    fraction of the cost); the final scoring of the best epoch uses every slice.
    ``body_region`` names the anatomy the model was trained on (recorded in the card).
    ``dice_present_classes_only`` limits the Dice term to the classes a batch shows (for small
    organs; see :func:`dice_ce_loss`).
    ``foreground_sampling`` says how a foreground-centred patch picks its centre: ``"pixel"``, a
    random organ pixel of a random slice (organs are drawn in proportion to their area), or
    ``"class"``, first an organ uniformly, then a slice showing it and a pixel of it (small organs
    such as the cord or the esophagus are seen as often as the mandible).
    ``lr_schedule`` is ``"plateau"`` (halve on a validation plateau) or ``"poly"`` (decay as
    ``(1 - iteration / total) ** 0.9`` over ``max_epochs``, as nnU-Net does; a fixed budget).
    ``initial_package`` names a model package (same architecture and classes) whose weights the
    training starts from: a second poly cycle from a trained model (a warm restart) goes on learning
    where the first one's learning rate had reached zero.
    ``test_time_zooms`` goes to the card (:attr:`ModelCard.test_time_zooms`): the in-plane zooms
    inference averages, chosen by measurement within the training's ``augment.scale_range``.
    """

    name: str
    version: str
    classes: tuple[ClassSpec, ...]
    architecture: str = "unet2d"
    architecture_kwargs: dict[str, Any] = field(default_factory=dict)
    input_spacing_mm: tuple[float, float] = (2.0, 2.0)
    hu_window: tuple[float, float] = (-400.0, 600.0)
    patch_size: tuple[int, int] = (128, 128)
    batch_size: int = 8
    iterations_per_epoch: int = 20
    max_epochs: int = 20
    learning_rate: float = 1e-3
    plateau_patience: int = 2
    plateau_factor: float = 0.5
    early_stopping_patience: int = 5
    min_improvement: float = 1e-3
    foreground_fraction: float = 0.5
    foreground_sampling: str = "pixel"
    lr_schedule: str = "plateau"
    initial_package: str = ""
    dice_weight: float = 1.0
    ce_weight: float = 1.0
    dice_present_classes_only: bool = False
    augment: AugmentConfig = AugmentConfig()
    validation_case_ids: tuple[str, ...] = ()
    validation_fraction: float = 0.2
    validation_slice_step: int = 1
    seed: int = 0
    licence: str = "Apache-2.0"
    fill_holes: bool = True
    smoothing_radius_vox: int = 1
    body_region: str = ""
    test_time_zooms: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if not self.classes:
            raise TrainingDataError(f"config {self.name!r}: no classes")
        names = [c.name for c in self.classes]
        if len(set(names)) != len(names):
            raise TrainingDataError(f"config {self.name!r}: duplicate class names {names}")
        for spec in self.classes:
            if spec.lr_partner and spec.lr_partner not in names:
                raise TrainingDataError(f"config {self.name!r}: class {spec.name!r} has lr_partner {spec.lr_partner!r}, not a class")
        if self.batch_size < 2:
            raise TrainingDataError(f"config {self.name!r}: batch_size must be >= 2 (batch normalisation), got {self.batch_size}")
        if self.foreground_sampling not in ("pixel", "class"):
            raise TrainingDataError(f"config {self.name!r}: foreground_sampling must be 'pixel' or 'class', got {self.foreground_sampling!r}")
        if self.lr_schedule not in ("plateau", "poly"):
            raise TrainingDataError(f"config {self.name!r}: lr_schedule must be 'plateau' or 'poly', got {self.lr_schedule!r}")
        if self.validation_slice_step < 1:
            raise TrainingDataError(f"config {self.name!r}: validation_slice_step must be >= 1, got {self.validation_slice_step}")

    def fingerprint(self) -> str:
        """Hash of everything that shapes the training trajectory (a resume must match it)."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class TrainResult:
    """Outcome of :func:`train_segmentation`."""

    package_dir: Path
    package_hash: str
    epochs_completed: int
    best_epoch: int
    best_score: float
    stopped_early: bool
    validation_metrics: dict[str, Any]
    history: tuple[dict[str, Any], ...]


@dataclass
class _PreparedCase:
    case_id: str
    images: torch.Tensor  # (nz, H, W) float32 in [0, 1]
    labels: torch.Tensor  # (nz, H, W) uint8 classes
    spacing_mm: tuple[float, float, float]  # model grid (column, row, slice)
    known: torch.Tensor  # (n_classes + 1,) bool: classes this case was contoured for; background always


def _class_lookup(case: TrainCase, classes: Sequence[ClassSpec]) -> np.ndarray:
    """Map every source label value of a label-map case to its model class (uint8 table)."""
    table = np.zeros(65536, dtype=np.uint8)
    by_name = {name: value for value, name in case.label_names.items()}
    for class_index, spec in enumerate(classes, start=1):
        for source in spec.sources:
            if isinstance(source, int):
                value = source
            elif source in by_name:
                value = int(by_name[source])
            else:
                continue  # this case does not contain that structure
            if not 0 <= value < table.size:
                raise TrainingDataError(f"case {case.case_id!r}: source label {source!r} value {value} outside 0..65535")
            table[value] = class_index
    return table


def known_classes(case: TrainCase, classes: Sequence[ClassSpec]) -> np.ndarray:
    """Which classes ``case`` was contoured for: ``(len(classes) + 1,)`` bool, background first.

    A class is known when the case names one of its sources (a mask of that name, or a label
    value named so); a source given as a label value is always known.
    """
    if isinstance(case.labels, Volume):
        names = set(case.label_names.values())
    else:
        names = set(case.labels)
    known = [True] + [any(isinstance(s, int) or s in names for s in spec.sources) for spec in classes]
    return np.array(known, dtype=bool)


def _class_map(case: TrainCase, ct: Volume, classes: Sequence[ClassSpec]) -> np.ndarray:
    if isinstance(case.labels, Volume):
        labels = to_standard_axial(case.labels)
        if not labels.same_grid(ct):
            raise TrainingDataError(
                f"case {case.case_id!r}: label map grid (shape {labels.shape}, origin {labels.origin_mm.tolist()}, "
                f"spacing {labels.spacing_mm.tolist()}) differs from the CT grid (shape {ct.shape}, "
                f"origin {ct.origin_mm.tolist()}, spacing {ct.spacing_mm.tolist()})"
            )
        values = labels.voxels.astype(np.int64)
        if values.min() < 0 or values.max() >= 65536:
            raise TrainingDataError(f"case {case.case_id!r}: label values must lie in 0..65535")
        return _class_lookup(case, classes)[values]
    # Masks are given on the CT's original grid: orient them like the CT.
    out = np.zeros(ct.shape, dtype=np.uint8)
    for class_index, spec in enumerate(classes, start=1):
        for source in spec.sources:
            if source in case.labels:
                mask = np.asarray(case.labels[source], dtype=bool)
                if mask.shape != case.ct.shape:
                    raise TrainingDataError(f"case {case.case_id!r}: mask {source!r} has shape {mask.shape}, CT {case.ct.shape}")
                out[to_standard_axial(case.ct.with_voxels(mask)).voxels] = class_index
    return out


def prepare_case(case: TrainCase, config: TrainConfig) -> _PreparedCase:
    """Orient, map labels, window and resample one case to the model grid."""
    ct = to_standard_axial(case.ct)
    classes = _class_map(case, ct, config.classes)
    nz, ny, nx = ct.shape
    size = model_grid_shape((ny, nx), ct.spacing_mm, config.input_spacing_mm)
    images = resample_images(window_hu(torch.from_numpy(np.ascontiguousarray(ct.voxels)), config.hu_window)[:, None], size)[:, 0]
    labels = resample_labels(torch.from_numpy(classes), size)
    spacing = (ct.spacing_mm[0] * nx / size[1], ct.spacing_mm[1] * ny / size[0], float(ct.spacing_mm[2]))
    known = torch.from_numpy(known_classes(case, config.classes))
    return _PreparedCase(case.case_id, images.contiguous(), labels.contiguous(), spacing, known)


def _split(prepared: list[_PreparedCase], config: TrainConfig) -> tuple[list[_PreparedCase], list[_PreparedCase]]:
    ids = [p.case_id for p in prepared]
    if config.validation_case_ids:
        unknown = set(config.validation_case_ids) - set(ids)
        if unknown:
            raise TrainingDataError(f"validation cases {sorted(unknown)} are not among the cases {ids}")
        val = [p for p in prepared if p.case_id in config.validation_case_ids]
        train = [p for p in prepared if p.case_id not in config.validation_case_ids]
    elif len(prepared) >= 2:
        n_val = max(1, int(round(config.validation_fraction * len(prepared))))
        train, val = prepared[:-n_val], prepared[-n_val:]
    else:
        only = prepared[0]
        n_val = max(1, int(round(config.validation_fraction * only.images.shape[0])))
        if only.images.shape[0] - n_val < 1:
            raise TrainingDataError(f"case {only.case_id!r} has too few slices ({only.images.shape[0]}) to split")
        train = [_PreparedCase(only.case_id, only.images[:-n_val], only.labels[:-n_val], only.spacing_mm, only.known)]
        val = [_PreparedCase(only.case_id + ":val", only.images[-n_val:], only.labels[-n_val:], only.spacing_mm, only.known)]
    if not train:
        raise TrainingDataError("every case went to validation: nothing left to train on")
    return train, val


def class_slice_index(train: Sequence[_PreparedCase], n_classes: int) -> list[np.ndarray]:
    """For each foreground class ``1..n_classes``, the ``(n, 2)`` (case, slice) pairs that show it."""
    pairs: list[list[tuple[int, int]]] = [[] for _ in range(n_classes)]
    for c, case in enumerate(train):
        flat = case.labels.flatten(1)
        for k in range(n_classes):
            for z in torch.nonzero((flat == k + 1).any(dim=1))[:, 0].tolist():
                pairs[k].append((c, z))
    return [np.array(p, dtype=np.int64).reshape(-1, 2) for p in pairs]


def _initial_weights(config: TrainConfig) -> dict[str, torch.Tensor]:
    """The weights of ``config.initial_package``, checked against the configuration."""
    start, card = load_package(config.initial_package)
    expected = (config.architecture, config.architecture_kwargs, [c.name for c in config.classes])
    found = (card.architecture, card.architecture_kwargs, [label.name for label in card.labels])
    if found != expected:
        raise TrainingDataError(f"initial_package {config.initial_package} is {found}, the configuration {expected}")
    return start.state_dict()


def _sample_batch(
    train: list[_PreparedCase],
    config: TrainConfig,
    rng: np.random.Generator,
    slice_index: np.ndarray,
    class_slices: Sequence[np.ndarray] = (),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random patches; ``foreground_fraction`` of them centred on a foreground pixel.

    ``slice_index`` is the ``(n, 2)`` table of (case, slice) pairs to draw from;
    ``class_slices`` (from :func:`class_slice_index`) serves ``foreground_sampling="class"``.
    Returns images, labels and the ``(B, n_classes + 1)`` known-class mask of each sample's case.
    """
    ph, pw = config.patch_size
    images = torch.zeros(config.batch_size, 1, ph, pw)
    labels = torch.zeros(config.batch_size, ph, pw, dtype=torch.long)
    known = torch.zeros(config.batch_size, len(config.classes) + 1, dtype=torch.bool)
    shown = [k for k, pairs in enumerate(class_slices) if len(pairs)]
    for b in range(config.batch_size):
        if config.foreground_sampling == "class" and shown and rng.random() < config.foreground_fraction:
            k = shown[int(rng.integers(len(shown)))]
            c, z = (int(v) for v in class_slices[k][int(rng.integers(len(class_slices[k])))])
            foreground = torch.nonzero(train[c].labels[z] == k + 1)
        else:
            c, z = (int(v) for v in slice_index[int(rng.integers(len(slice_index)))])
            centred = config.foreground_sampling == "pixel" and rng.random() < config.foreground_fraction
            foreground = torch.nonzero(train[c].labels[z]) if centred else None
        known[b] = train[c].known
        image, label = train[c].images[z], train[c].labels[z]
        height, width = image.shape
        if foreground is not None and len(foreground):
            cy, cx = (int(v) for v in foreground[int(rng.integers(len(foreground)))])
        else:
            cy, cx = int(rng.integers(height)), int(rng.integers(width))
        top, left = cy - ph // 2, cx - pw // 2
        # Copy the overlap of the patch with the slice; the rest stays 0 (below the window).
        y0, y1 = max(0, top), min(height, top + ph)
        x0, x1 = max(0, left), min(width, left + pw)
        images[b, 0, y0 - top:y1 - top, x0 - left:x1 - left] = image[y0:y1, x0:x1]
        labels[b, y0 - top:y1 - top, x0 - left:x1 - left] = label[y0:y1, x0:x1].long()
    return images, labels, known


def dice_ce_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    dice_weight: float = 1.0,
    ce_weight: float = 1.0,
    known: torch.Tensor | None = None,
    present_only: bool = False,
) -> torch.Tensor:
    """Soft Dice over the foreground classes present in the batch (batch Dice) plus cross-entropy,
    for partial labels.

    Parameters
    ----------
    logits : torch.Tensor
        ``(B, C, H, W)``.
    labels : torch.Tensor
        ``(B, H, W)`` int64.
    dice_weight, ce_weight : float
        Weights of the two terms.
    known : torch.Tensor, optional
        ``(B, C)`` bool: the classes each sample was contoured for (all when ``None``). A
        background pixel of a sample that does not know class ``c`` may be ``c``: its
        cross-entropy takes the summed probability of background and the unknown classes, and
        class ``c``'s Dice leaves that sample out.
    present_only : bool
        Dice only of the classes present in the batch's labels. A class absent from the batch
        scores 1 for predicting nothing anywhere; with small organs that reward drowns the rest
        (on the head-and-neck data the network collapsed to background). Large structures (the
        default) learn faster with it.
    """
    logits = logits.float()
    batch, n_classes = logits.shape[:2]
    if known is None:
        known = torch.ones(batch, n_classes, dtype=torch.bool, device=logits.device)
    known = known.to(logits.device)
    log_probabilities = logits.log_softmax(dim=1)
    # Background stands for "background or any class this sample does not know".
    merge = (~known).clone()
    merge[:, 0] = True
    background = torch.logsumexp(log_probabilities.masked_fill(~merge[:, :, None, None], -math.inf), dim=1)
    labelled = log_probabilities.gather(1, labels[:, None])[:, 0]
    ce = -torch.where(labels == 0, background, labelled).mean()
    weight = known[:, 1:, None, None].float()
    probabilities = log_probabilities.exp()[:, 1:] * weight
    one_hot = F.one_hot(labels, n_classes).permute(0, 3, 1, 2)[:, 1:].float() * weight
    intersection = (probabilities * one_hot).sum(dim=(0, 2, 3))
    denominator = probabilities.sum(dim=(0, 2, 3)) + one_hot.sum(dim=(0, 2, 3))
    dice = (2 * intersection + 1.0) / (denominator + 1.0)
    in_batch = one_hot.sum(dim=(0, 2, 3)) > 0 if present_only else known[:, 1:].any(dim=0)
    dice_loss = (1 - dice[in_batch]).mean() if bool(in_batch.any()) else logits.new_zeros(())
    return dice_weight * dice_loss + ce_weight * ce


@torch.inference_mode()
def _predict(model: nn.Module, images: torch.Tensor, device: torch.device, batch: int = 8) -> torch.Tensor:
    out = []
    amp_dtype = _autocast_dtype(device)
    for start in range(0, images.shape[0], batch):
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits = model(images[start:start + batch, None].to(device))
        out.append(logits.argmax(dim=1).to(torch.uint8).cpu())
    return torch.cat(out) if out else torch.zeros((0, *images.shape[1:]), dtype=torch.uint8)


def _dsc(reference: np.ndarray, predicted: np.ndarray) -> float:
    total = int(reference.sum()) + int(predicted.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(reference, predicted).sum()) / total


def evaluate(
    model: nn.Module, cases: list[_PreparedCase], config: TrainConfig, device: torch.device, *, full: bool = True
) -> dict[str, Any]:
    """Segment validation cases and score each class (mean over the cases that contain it).

    ``full`` scores every slice with DSC, Jaccard, HD95 and ASD; otherwise every
    ``config.validation_slice_step``-th slice with DSC only (the per-epoch model selection).
    """
    model.eval()
    keys = ("dsc", "ji", "hd95_mm", "asd_mm") if full else ("dsc",)
    per_class: dict[str, dict[str, list[float]]] = {c.name: {k: [] for k in keys} for c in config.classes}
    step = 1 if full else config.validation_slice_step
    for case in cases:
        predicted = _predict(model, case.images[::step], device).numpy()
        reference = case.labels[::step].numpy()
        for index, spec in enumerate(config.classes, start=1):
            if not bool(case.known[index]) or not (reference == index).any():
                continue
            if not full:
                per_class[spec.name]["dsc"].append(_dsc(reference == index, predicted == index))
                continue
            metrics = compare_masks(reference == index, predicted == index, case.spacing_mm, spec.name)
            per_class[spec.name]["dsc"].append(metrics.dsc)
            per_class[spec.name]["ji"].append(metrics.ji)
            per_class[spec.name]["hd95_mm"].append(metrics.hd95_mm)
            per_class[spec.name]["asd_mm"].append(metrics.asd_mm)
    summary: dict[str, Any] = {"classes": {}}
    for name, values in per_class.items():
        if values["dsc"]:
            summary["classes"][name] = {
                key: (float(np.mean(v)) if all(math.isfinite(x) for x in v) else None) for key, v in values.items()
            } | {"cases": len(values["dsc"])}
    scored = [m["dsc"] for m in summary["classes"].values()]
    summary["mean_dsc"] = float(np.mean(scored)) if scored else 0.0
    return summary


def _card(config: TrainConfig, training_data: dict[str, Any], validation: dict[str, Any]) -> ModelCard:
    return ModelCard(
        name=config.name,
        version=config.version,
        labels=tuple(
            CardLabel(index=i, name=c.name, rtstruct_name=c.rtstruct_name, roi_type=c.roi_type, largest_component=c.largest_component)
            for i, c in enumerate(config.classes, start=1)
        ),
        input_spacing_mm=tuple(config.input_spacing_mm),  # type: ignore[arg-type]
        hu_window=tuple(config.hu_window),  # type: ignore[arg-type]
        architecture=config.architecture,
        architecture_kwargs=dict(config.architecture_kwargs),
        in_channels=1,
        training_data=training_data,
        validation_metrics=validation,
        licence=config.licence,
        fill_holes=config.fill_holes,
        smoothing_radius_vox=config.smoothing_radius_vox,
        body_region=config.body_region,
        test_time_mirror=_mirror_pairs(config),
        test_time_zooms=tuple(config.test_time_zooms) if config.test_time_zooms else None,
    )


def _mirror_pairs(config: TrainConfig) -> tuple[tuple[str, str], ...] | None:
    """The lateral class pairs of a model trained with left-right mirroring (inference mirrors it
    too, :attr:`ModelCard.test_time_mirror`); ``None`` when it never saw a mirror image."""
    if config.augment.flip_lr_probability <= 0:
        return None
    pairs = {tuple(sorted((spec.name, spec.lr_partner))) for spec in config.classes if spec.lr_partner}
    return tuple(sorted(pairs))  # type: ignore[arg-type]


class _BatchPrefetcher:
    """Draws and augments one epoch's batches in a background thread, in a fixed order.

    The thread is the only consumer of the epoch's random generators, so the batches are those
    the foreground would draw; ``depth`` batches wait ready while the network trains.
    """

    def __init__(self, make_batch: Any, count: int, depth: int = 2) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._count = count
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(make_batch,), daemon=True, name="batch-prefetch")
        self._thread.start()

    def _run(self, make_batch: Any) -> None:
        try:
            for _ in range(self._count):
                if self._stop.is_set():
                    return
                self._queue.put(("batch", make_batch()))
        except BaseException as error:  # handed to the training thread, which re-raises it
            self._queue.put(("error", error))

    def __iter__(self) -> Iterator[Any]:
        for _ in range(self._count):
            kind, item = self._queue.get()
            if kind == "error":
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.1)
            except queue.Empty:
                pass


def _autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 where the GPU supports it, else fp16; ``None`` (fp32) on CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    temporary = path.with_suffix(".tmp")
    torch.save(state, temporary)
    temporary.replace(path)


def train_segmentation(
    cases: Iterable[TrainCase],
    config: TrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = True,
    device: str = "cpu",
    max_epochs_this_run: int | None = None,
    progress: Callable[[str], None] | None = None,
    max_seconds: float | None = None,
    workers: int = 1,
) -> TrainResult:
    """Train, validate each epoch, stop early on a plateau, and package the best epoch.

    Parameters
    ----------
    cases : iterable of TrainCase
        Training and validation cases (split per ``config``); each is prepared as it comes, so a
        generator keeps only the model-grid copies in memory.
    config : TrainConfig
        Classes, architecture, preprocessing, optimisation and augmentation settings.
    out_dir : str or Path
        Receives ``checkpoint.pt`` (after every epoch) and ``package/`` (the model package).
    resume : bool
        Continue from ``checkpoint.pt`` when present (it must come from the same config).
    device : str
        ``"cpu"`` or ``"cuda"``.
    max_epochs_this_run : int, optional
        Stop after this many epochs in this call (the checkpoint allows continuing later).
    progress : callable, optional
        Receives one line per stage and epoch (and every 50 iterations), e.g. to print on stderr.
    max_seconds : float, optional
        Start no new epoch after this many seconds of this call (a bound on wall-clock time; the
        card records the epochs done, and the checkpoint allows continuing).
    workers : int
        Threads that prepare the cases (their resampling releases the GIL); the result does not
        depend on it.

    Returns
    -------
    TrainResult

    Raises
    ------
    TrainingDataError
        Unusable cases, label mapping or validation split.
    TrainingResumeError
        The checkpoint in ``out_dir`` was written for a different config.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch_device = torch.device(device)
    prepared = list(ordered_imap(lambda case: prepare_case(case, config), cases, workers))
    if not prepared:
        raise TrainingDataError("no training cases")
    train, val = _split(prepared, config)
    say = progress or (lambda line: None)
    say(f"{len(train)} training and {len(val)} validation cases on the model grid")
    if not any(bool(case.labels.any()) for case in train):
        raise TrainingDataError(f"no training case contains any of the classes {[c.name for c in config.classes]}")

    torch.manual_seed(config.seed)
    model = build_model(config.architecture, 1, len(config.classes) + 1, **config.architecture_kwargs).to(torch_device)
    if torch_device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # one patch size throughout: the fastest kernels, found once
    if config.initial_package:
        model.load_state_dict(_initial_weights(config))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    amp_dtype = _autocast_dtype(torch_device)
    # fp16 needs loss scaling against underflowing gradients; bf16 has fp32's range.
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    total_iterations = config.max_epochs * config.iterations_per_epoch
    if config.lr_schedule == "poly":
        scheduler: Any = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda it: max(0.0, 1.0 - it / total_iterations) ** 0.9)
    else:
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=config.plateau_factor, patience=config.plateau_patience)
    names = [c.name for c in config.classes]
    lr_swap = torch.arange(len(names) + 1)
    for index, spec in enumerate(config.classes, start=1):
        if spec.lr_partner:
            lr_swap[index] = names.index(spec.lr_partner) + 1

    epoch, best_score, best_epoch, stale = 0, -math.inf, 0, 0
    best_state: dict[str, torch.Tensor] = {}
    best_validation: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    checkpoint_path = out_dir / CHECKPOINT_FILE
    if resume and checkpoint_path.is_file():
        checkpoint = torch.load(checkpoint_path, map_location=torch_device, weights_only=False)
        if checkpoint["config_fingerprint"] != config.fingerprint():
            raise TrainingResumeError(
                f"{checkpoint_path} was written for another configuration; remove it or pass resume=False"
            )
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        if "scaler" in checkpoint:
            scaler.load_state_dict(checkpoint["scaler"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        epoch, best_score, best_epoch, stale = checkpoint["epoch"], checkpoint["best_score"], checkpoint["best_epoch"], checkpoint["stale"]
        best_state, best_validation, history = checkpoint["best_state"], checkpoint["best_validation"], checkpoint["history"]

    stopped_early = stale >= config.early_stopping_patience
    epochs_this_run = 0
    spacing = config.input_spacing_mm
    slice_index = np.array([(c, z) for c, case in enumerate(train) for z in range(case.images.shape[0])], dtype=np.int64)
    class_slices = class_slice_index(train, len(config.classes)) if config.foreground_sampling == "class" else []
    # On a GPU the resampling of a batch is a few kernels, and on the CPU thread it would starve
    # the GPU; on the CPU it runs beside the network in the prefetch thread.
    augment_on_device = torch_device.type == "cuda"
    run_started = time.perf_counter()
    while epoch < config.max_epochs and not stopped_early:
        if max_epochs_this_run is not None and epochs_this_run >= max_epochs_this_run:
            break
        if max_seconds is not None and time.perf_counter() - run_started >= max_seconds:
            say(f"time limit of {max_seconds:.0f} s reached after epoch {epoch}")
            break
        started = time.perf_counter()
        rng = np.random.default_rng([config.seed, epoch])
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
        model.train()
        losses = []

        def make_batch(rng: np.random.Generator = rng, generator: torch.Generator = generator) -> tuple[torch.Tensor, ...]:
            images, labels, known = _sample_batch(train, config, rng, slice_index, class_slices)
            if not augment_on_device:
                images, labels = augment_batch(images, labels, config.augment, spacing, lr_swap, generator)
            return images, labels, known

        batches = _BatchPrefetcher(make_batch, config.iterations_per_epoch)
        try:
            for images, labels, known in batches:
                images, labels = images.to(torch_device, non_blocking=True), labels.to(torch_device, non_blocking=True)
                if augment_on_device:  # the same draws, in the same order, as the thread's
                    images, labels = augment_batch(images, labels, config.augment, spacing, lr_swap, generator)
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(torch_device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                    logits = model(images)
                loss = dice_ce_loss(logits, labels, config.dice_weight, config.ce_weight, known,
                                    config.dice_present_classes_only)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                if config.lr_schedule == "poly":
                    scheduler.step()
                losses.append(float(loss.detach()))
                if len(losses) % 50 == 0:
                    say(f"epoch {epoch + 1}/{config.max_epochs} iteration {len(losses)}/{config.iterations_per_epoch} "
                        f"loss {np.mean(losses[-50:]):.4f}")
        finally:
            batches.close()
        validation = evaluate(model, val, config, torch_device, full=False)
        score = validation["mean_dsc"]
        if config.lr_schedule == "plateau":
            scheduler.step(score)
        epoch += 1
        epochs_this_run += 1
        if score > best_score + config.min_improvement:
            best_score, best_epoch, stale = score, epoch, 0
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            best_validation = validation
        else:
            stale += 1
        stopped_early = stale >= config.early_stopping_patience
        history.append({
            "epoch": epoch,
            "train_loss": float(np.mean(losses)),
            "validation_mean_dsc": score,
            "learning_rate": optimizer.param_groups[0]["lr"],
            "seconds": time.perf_counter() - started,
        })
        say(f"epoch {epoch}: loss {history[-1]['train_loss']:.4f}, validation DSC {score:.4f} "
            f"(best {best_score:.4f} at epoch {best_epoch}), {history[-1]['seconds']:.0f} s")
        _save_checkpoint(checkpoint_path, {
            "config_fingerprint": config.fingerprint(),
            "epoch": epoch,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "best_score": best_score,
            "best_epoch": best_epoch,
            "stale": stale,
            "best_state": best_state,
            "best_validation": best_validation,
            "history": history,
        })

    if best_state:
        model.load_state_dict(best_state)
    if best_validation:
        # The per-epoch selection scored DSC on a subset of slices; the card gets every metric on all.
        say(f"scoring epoch {best_epoch} on every validation slice")
        best_validation = evaluate(model, val, config, torch_device, full=True)
    training_data = {
        "training_cases": [{"case_id": c.case_id, "slices": int(c.images.shape[0])} for c in train],
        "class_counts": {spec.name: {"training": sum(bool(c.known[i]) for c in train), "validation": sum(bool(c.known[i]) for c in val)}
                         for i, spec in enumerate(config.classes, start=1)},
        "validation_cases": [{"case_id": c.case_id, "slices": int(c.images.shape[0])} for c in val],
        "label_mapping": {c.name: list(c.sources) for c in config.classes},
        "iterations": epoch * config.iterations_per_epoch,
        "batch_size": config.batch_size,
        "patch_size": list(config.patch_size),
        "seed": config.seed,
    }
    if config.initial_package:  # the iterations above continue that package's training
        training_data["initial_package"] = {"path": config.initial_package, "sha256": package_hash(config.initial_package)}
    validation_metrics = {"epoch": best_epoch, **best_validation}
    package_dir = out_dir / PACKAGE_DIR
    content_hash = save_package(package_dir, model.cpu(), _card(config, training_data, validation_metrics))
    return TrainResult(
        package_dir=package_dir,
        package_hash=content_hash,
        epochs_completed=epoch,
        best_epoch=best_epoch,
        best_score=float(best_score),
        stopped_early=stopped_early,
        validation_metrics=validation_metrics,
        history=tuple(history),
    )
