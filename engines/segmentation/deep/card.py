"""The model card: what a segmentation model is, as data beside its weights (JSON).

A card says which classes the network outputs and what they are called in an RTSTRUCT, how its
input must be prepared (in-plane spacing, HU window), how to rebuild the network, what it was
trained on, how well it did on validation data, and under which licence it may be used.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from rtgrid.engines.errors import EngineError

ROI_TYPES = frozenset({"ORGAN", "AVOIDANCE", "EXTERNAL", "PTV", "CTV", "GTV", "CAVITY", "SUPPORT", "MARKER", "CONTROL"})


class ModelCardError(EngineError, ValueError):
    """A model card is missing a field or holds a value rtgrid cannot use."""


@dataclass(frozen=True)
class CardLabel:
    """One output class of the network.

    Attributes
    ----------
    index : int
        Value of this class in the uint8 label map (1..n; 0 is background).
    name : str
        The model's own class name (e.g. ``"liver"``).
    rtstruct_name : str
        ROIName to write in an RTSTRUCT (e.g. ``"Liver"``).
    roi_type : str
        RTROIInterpretedType (``ORGAN``, ``PTV``, ...).
    largest_component : bool
        True when the anatomy is one connected body, so post-processing keeps only the largest
        3-D component.
    """

    index: int
    name: str
    rtstruct_name: str
    roi_type: str = "ORGAN"
    largest_component: bool = True


@dataclass(frozen=True)
class ModelCard:
    """Everything needed to run and judge a segmentation model, beside its weights.

    Attributes
    ----------
    name, version : str
        Identity of the model (a package hash pins the exact weights).
    labels : tuple[CardLabel, ...]
        The foreground classes, indices 1..n in order.
    input_spacing_mm : tuple[float, float]
        In-plane ``(column, row)`` spacing the network expects; slices are resampled to it.
    hu_window : tuple[float, float]
        HU mapped linearly to [0, 1] and clipped.
    architecture : str
        Name known to :func:`build_model`.
    architecture_kwargs : dict
        Keyword arguments of :func:`build_model`.
    in_channels : int
        Network input channels.
    training_data : dict
        Summary of the data it was trained on (cases, slices, sources).
    validation_metrics : dict
        Metrics on validation data (per class and mean), as measured by the trainer.
    licence : str
        Terms of use of the weights.
    fill_holes : bool
        Post-processing fills enclosed background holes of each class.
    smoothing_radius_vox : int
        Radius of the in-plane opening/closing that removes specks and notches (0 disables).
    body_region : str
        The anatomy the model was trained on (e.g. ``"head_and_neck"``); ``""`` when undeclared.
        The grid skips a model whose region a CT does not cover.
    extra : dict
        Anything else worth recording (citations, preprocessing notes).
    test_time_mirror : tuple of (str, str) pairs, or None
        When set, inference averages the class probabilities of each slice and of its left-right
        mirror image (mirrored back, with these lateral class pairs swapped, e.g.
        ``("parotid_r", "parotid_l")``). For a model trained with left-right mirroring, to which a
        mirrored patient is a patient. ``None``: the slices only.
    test_time_zooms : tuple of float, or None
        When set, inference runs at each of these in-plane zooms (1.1: the anatomy 10 % larger on
        the model grid) and averages the class probabilities back on the CT grid. For a model
        trained with scale augmentation covering them. ``None``: the card's spacing only.
    """

    name: str
    version: str
    labels: tuple[CardLabel, ...]
    input_spacing_mm: tuple[float, float]
    hu_window: tuple[float, float]
    architecture: str
    architecture_kwargs: dict[str, Any]
    in_channels: int
    training_data: dict[str, Any]
    validation_metrics: dict[str, Any]
    licence: str
    fill_holes: bool = True
    smoothing_radius_vox: int = 1
    body_region: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    test_time_mirror: tuple[tuple[str, str], ...] | None = None
    test_time_zooms: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        indices = [label.index for label in self.labels]
        if indices != list(range(1, len(indices) + 1)):
            raise ModelCardError(f"model card {self.name!r}: label indices must be 1..n in order, got {indices}")
        if len(indices) > 254:
            raise ModelCardError(f"model card {self.name!r}: {len(indices)} classes do not fit a uint8 label map")
        for label in self.labels:
            if label.roi_type not in ROI_TYPES:
                raise ModelCardError(
                    f"model card {self.name!r}: label {label.name!r} has roi_type {label.roi_type!r}; "
                    f"expected one of {sorted(ROI_TYPES)}"
                )
        if len(self.input_spacing_mm) != 2 or min(self.input_spacing_mm) <= 0:
            raise ModelCardError(f"model card {self.name!r}: input_spacing_mm must be two positive mm values, got {self.input_spacing_mm}")
        if len(self.hu_window) != 2 or self.hu_window[0] >= self.hu_window[1]:
            raise ModelCardError(f"model card {self.name!r}: hu_window must be (low, high) with low < high, got {self.hu_window}")
        names = [label.name for label in self.labels]
        paired = [name for pair in self.test_time_mirror or () for name in pair]
        if any(len(pair) != 2 for pair in self.test_time_mirror or ()) or len(set(paired)) != len(paired) \
                or not set(paired) <= set(names):
            raise ModelCardError(f"model card {self.name!r}: test_time_mirror must pair distinct class names of "
                                 f"{names}, each once; got {self.test_time_mirror}")
        if self.test_time_zooms is not None and (
                not self.test_time_zooms or not all(0.5 <= zoom <= 2.0 for zoom in self.test_time_zooms)):
            raise ModelCardError(f"model card {self.name!r}: test_time_zooms must be in-plane zoom factors from 0.5 "
                                 f"to 2, at least one; got {self.test_time_zooms}")

    def mirror_permutation(self) -> list[int]:
        """Network outputs in the order a left-right mirror image gives them: each class of a
        ``test_time_mirror`` pair at its partner's index, every other class (background included)
        at its own."""
        order = list(range(self.n_classes))
        index = {label.name: label.index for label in self.labels}
        for left, right in self.test_time_mirror or ():
            order[index[left]], order[index[right]] = index[right], index[left]
        return order

    @property
    def n_classes(self) -> int:
        """Network outputs, background included."""
        return len(self.labels) + 1

    def label_names(self) -> dict[int, str]:
        """``{index: model class name}`` including ``0: "background"``."""
        return {0: "background", **{label.index: label.name for label in self.labels}}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        """Canonical JSON (sorted keys), the bytes the package hash covers."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "model card") -> "ModelCard":
        """Read a card, naming the first missing or malformed field.

        Raises
        ------
        ModelCardError
            When a required field is missing or has the wrong shape.
        """
        required = ("name", "version", "labels", "input_spacing_mm", "hu_window", "architecture",
                    "architecture_kwargs", "in_channels", "training_data", "validation_metrics", "licence")
        missing = [key for key in required if key not in data]
        if missing:
            raise ModelCardError(f"{source}: missing field(s) {', '.join(missing)}")
        labels = []
        for position, entry in enumerate(data["labels"]):
            absent = [key for key in ("index", "name", "rtstruct_name") if key not in entry]
            if absent:
                raise ModelCardError(f"{source}: labels[{position}] is missing {', '.join(absent)}")
            labels.append(CardLabel(
                index=int(entry["index"]),
                name=str(entry["name"]),
                rtstruct_name=str(entry["rtstruct_name"]),
                roi_type=str(entry.get("roi_type", "ORGAN")),
                largest_component=bool(entry.get("largest_component", True)),
            ))
        return cls(
            name=str(data["name"]),
            version=str(data["version"]),
            labels=tuple(labels),
            input_spacing_mm=tuple(float(v) for v in data["input_spacing_mm"]),  # type: ignore[arg-type]
            hu_window=tuple(float(v) for v in data["hu_window"]),  # type: ignore[arg-type]
            architecture=str(data["architecture"]),
            architecture_kwargs=dict(data["architecture_kwargs"]),
            in_channels=int(data["in_channels"]),
            training_data=dict(data["training_data"]),
            validation_metrics=dict(data["validation_metrics"]),
            licence=str(data["licence"]),
            fill_holes=bool(data.get("fill_holes", True)),
            smoothing_radius_vox=int(data.get("smoothing_radius_vox", 1)),
            body_region=str(data.get("body_region", "")),
            extra=dict(data.get("extra", {})),
            test_time_mirror=_pairs(data.get("test_time_mirror"), source),
            test_time_zooms=_zooms(data.get("test_time_zooms"), source),
        )


def _zooms(value: Any, source: str) -> tuple[float, ...] | None:
    """``test_time_zooms`` as read from JSON (a list of numbers, or null)."""
    if value is None:
        return None
    try:
        return tuple(float(zoom) for zoom in value)
    except (TypeError, ValueError) as exc:
        raise ModelCardError(f"{source}: test_time_zooms must be a list of zoom factors, got {value!r}") from exc


def _pairs(value: Any, source: str) -> tuple[tuple[str, str], ...] | None:
    """``test_time_mirror`` as read from JSON (a list of two-name lists, or null)."""
    if value is None:
        return None
    try:
        return tuple((str(a), str(b)) for a, b in value)
    except (TypeError, ValueError) as exc:
        raise ModelCardError(f"{source}: test_time_mirror must be a list of [class, class] pairs, got {value!r}") from exc
