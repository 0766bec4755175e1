"""``rtgrid train-seg``: train a segmentation model on a department's own cases, into a package.

The configuration is one JSON file: the model (name, version, classes with the source labels
that make each one, architecture, preprocessing, optimisation, augmentation, seed — the fields
of ``TrainConfig``) and the cases. A case is a CT (DICOM series folder, or a NIfTI file) with
either an RTSTRUCT drawn on it (``"rtstruct"``: its ROI names are the sources) or a label map
on its grid (``"labels"``, with ``"label_names"``: ``{value: name}`` or a JSON file of it; or
give class sources as label values), or OpenKBP patients (``"openkbp"``: a ``pt_N.npz`` file or
a glob of them, e.g. ``"../shared/data/openkbp/train/pt_*.npz"``; their masks carry TG-263 names,
and an organ a patient lacks was not contoured: it is left out of that patient's loss). A case
entry with ``"validation": true`` goes to model selection (its case ids become
``validation_case_ids``). Paths are relative to the configuration file. Training
writes a checkpoint each epoch (a rerun resumes), and the best epoch's model package under
``OUT/package``, which ``rtgrid admin models add`` registers. Example::

    {"name": "hn-parotids", "version": "1.0",
     "classes": [{"name": "parotid_l", "rtstruct_name": "Parotid_L", "sources": ["Parotid L", "PAROTID_L"],
                  "lr_partner": "parotid_r"},
                 {"name": "parotid_r", "rtstruct_name": "Parotid_R", "sources": ["Parotid R"],
                  "lr_partner": "parotid_l"}],
     "architecture": "deeplabv3plus_mobilenetv2", "max_epochs": 40, "seed": 0,
     "augment": {"rotation_deg": 10, "flip_lr_probability": 0.5},
     "cases": [{"id": "p001", "ct": "p001/ct", "rtstruct": "p001/RS.dcm"},
               {"id": "p002", "ct": "p002/ct.nii.gz", "labels": "p002/seg.nii.gz", "label_names": "labels.json"}]}
"""

from __future__ import annotations

import dataclasses
import glob
import json
import sys
import time
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import torch
import typer

from rtgrid.engines.dicomrt.rtstruct import read_rtstruct
from rtgrid.engines.parallel import ordered_imap
from rtgrid.engines.errors import EngineError
from rtgrid.engines.imaging.intake import load_series_dir
from rtgrid.engines.imaging.openkbp import OAR_NAMES, load_openkbp_patient
from rtgrid.engines.segmentation.deep.augment import AugmentConfig
from rtgrid.engines.segmentation.deep.image_io import read_image_volume
from rtgrid.engines.segmentation.deep.training import (
    ClassSpec,
    TrainCase,
    TrainConfig,
    train_segmentation,
)


class TrainSetupError(ValueError):
    """The training configuration or one of its cases cannot be used (the message says which)."""


def _fields(cls: type, data: dict[str, Any], where: str) -> dict[str, Any]:
    """Keyword arguments of dataclass ``cls`` from JSON ``data``: JSON lists become the tuples
    the dataclass expects; an unknown key is an error (a typo must not be silently ignored)."""
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise TrainSetupError(f"{where}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    hints = typing.get_type_hints(cls)
    return {k: tuple(v) if isinstance(v, list) and str(hints[k]).startswith("tuple") else v for k, v in data.items()}


def load_train_config(path: Path) -> tuple[TrainConfig, list[dict[str, Any]]]:
    """Read the configuration file: the training config and the case entries.

    Raises
    ------
    TrainSetupError
        Not JSON, no cases, unknown or malformed fields.
    """
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise TrainSetupError(f"{path}: {exc}") from None
    if not isinstance(data, dict):
        raise TrainSetupError(f"{path}: expected a JSON object")
    cases = data.pop("cases", None)
    if not cases:
        raise TrainSetupError(f"{path}: 'cases' is missing or empty")
    try:
        classes = tuple(ClassSpec(**_fields(ClassSpec, c, f"{path}: classes[{i}]"))
                        for i, c in enumerate(data.pop("classes", [])))
        augment = AugmentConfig(**_fields(AugmentConfig, data.pop("augment", {}), f"{path}: augment"))
        fields = _fields(TrainConfig, data, str(path))
        if fields.get("initial_package"):  # relative to the configuration, like the cases
            fields["initial_package"] = str((path.parent / fields["initial_package"]).resolve())
        config = TrainConfig(classes=classes, augment=augment, **fields)
    except TypeError as exc:  # a required field is missing
        raise TrainSetupError(f"{path}: {exc}") from None
    return config, cases


def openkbp_paths(entry: dict[str, Any], base: Path, position: int) -> list[Path]:
    """The ``.npz`` files an ``openkbp`` case entry names (a file or a glob), sorted by patient number.

    Raises
    ------
    TrainSetupError
        Unknown fields, or a pattern that matches no file.
    """
    where = f"cases[{position}]"
    unknown = sorted(set(entry) - {"openkbp", "validation"})
    if unknown:
        raise TrainSetupError(f"{where}: unknown field(s) {', '.join(unknown)} beside 'openkbp'")
    pattern = str(base / entry["openkbp"])
    found = [Path(p) for p in glob.glob(pattern) if p.endswith(".npz")]
    if not found:
        raise TrainSetupError(f"{where}: no OpenKBP .npz file matches {pattern}")
    return sorted(found, key=lambda p: (len(p.stem), p.stem, str(p)))


def load_openkbp_case(path: Path) -> TrainCase:
    """An OpenKBP patient as a :class:`TrainCase`: its CT and its organ-at-risk masks (TG-263 names)."""
    patient = load_openkbp_patient(path)
    masks = {name: mask for name, mask in patient.masks.items() if name in OAR_NAMES}
    return TrainCase(patient.patient_id, patient.volume, masks)


def expand_cases(entries: list[dict[str, Any]], base: Path) -> tuple[list[tuple[str, Any]], tuple[str, ...]]:
    """Case entries as ``(kind, what)`` items (one per OpenKBP file) and the validation case ids.

    Raises
    ------
    TrainSetupError
        A malformed entry, or the same case id twice.
    """
    items: list[tuple[str, Any]] = []
    validation: list[str] = []
    seen: set[str] = set()
    for position, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise TrainSetupError(f"cases[{position}]: expected an object, got {entry!r}")
        if "openkbp" in entry:
            paths = openkbp_paths(entry, base, position)
            ids = [p.stem for p in paths]
            items += [("openkbp", p) for p in paths]
        else:
            items.append(("entry", (position, entry)))
            ids = [str(entry["id"])] if "id" in entry else []
        for case_id in ids:
            if case_id in seen:
                raise TrainSetupError(f"cases[{position}]: case {case_id!r} is listed twice")
            seen.add(case_id)
        if entry.get("validation"):
            if not ids:
                raise TrainSetupError(f"cases[{position}]: a validation case needs an 'id'")
            validation += ids
    return items, tuple(validation)


def iter_cases(items: list[tuple[str, Any]], base: Path, workers: int = 1) -> Iterator[TrainCase]:
    """Load the cases in order, on ``workers`` threads a few ahead (training keeps only their
    model-grid copies), with progress on stderr."""
    def load(item: tuple[str, Any]) -> TrainCase:
        kind, what = item
        return load_openkbp_case(what) if kind == "openkbp" else load_case(what[1], base, what[0])

    for number, case in enumerate(ordered_imap(load, items, workers), start=1):
        if number % 20 == 0 or number == len(items):
            _progress(f"loaded {number}/{len(items)} cases")
        yield case


def load_case(entry: dict[str, Any], base: Path, position: int) -> TrainCase:
    """One case entry of the configuration as a :class:`TrainCase`.

    Raises
    ------
    TrainSetupError
        A missing file, or neither ``rtstruct`` nor ``labels`` given.
    """
    where = f"cases[{position}]"
    unknown = sorted(set(entry) - {"id", "ct", "rtstruct", "labels", "label_names", "validation"})
    if unknown:
        raise TrainSetupError(f"{where}: unknown field(s) {', '.join(unknown)}")
    if "ct" not in entry or ("rtstruct" in entry) == ("labels" in entry):
        raise TrainSetupError(f"{where}: give 'ct' and exactly one of 'rtstruct' or 'labels'")
    paths = {key: base / entry[key] for key in ("ct", "rtstruct", "labels") if key in entry}
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        raise TrainSetupError(f"{where}: not found: {', '.join(missing)}")
    case_id = str(entry.get("id", paths["ct"].name))
    if "rtstruct" in paths:
        # The CT as intake reads it, so the RTSTRUCT's contours land on exactly its grid.
        series = load_series_dir(paths["ct"])
        masks = read_rtstruct(pydicom.dcmread(paths["rtstruct"]), series.volume,
                              frame_of_reference_uid=series.frame_of_reference_uid)
        return TrainCase(case_id, series.volume, masks)
    names = entry.get("label_names", {})
    if isinstance(names, str):
        names = json.loads((base / names).read_text("utf-8"))
    return TrainCase(case_id, read_image_volume(paths["ct"]), read_image_volume(paths["labels"]),
                     {int(k): str(v) for k, v in names.items()})


def _progress(line: str) -> None:
    print(f"train-seg {time.strftime('%H:%M:%S')}: {line}", file=sys.stderr, flush=True)


def train_seg_command(
    config: Path = typer.Argument(..., exists=True, dir_okay=False, help="Training configuration (JSON)."),
    out: Path = typer.Option(..., "--out", help="Folder for the checkpoint and the model package (OUT/package)."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    seed: int = typer.Option(None, help="Override the configuration's seed."),
    resume: bool = typer.Option(True, help="Continue from OUT/checkpoint.pt when present."),
    max_epochs_this_run: int = typer.Option(None, help="Stop after this many epochs (resume later)."),
    max_minutes: float = typer.Option(None, help="Start no new epoch after this many minutes (resume later)."),
    workers: int = typer.Option(1, min=1, help="Threads that load and prepare the cases (the result does not depend on it)."),
) -> None:
    """Train a segmentation model (U-Net or DeepLabv3+) and write a model package; prints a JSON summary."""
    try:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise TrainSetupError(f"--device {device}: this machine has no CUDA device (train with --device cpu, "
                                  "or make model-hn HN_DEVICE=cpu: hours instead of minutes)")
        train_config, entries = load_train_config(config)
        if seed is not None:
            train_config = dataclasses.replace(train_config, seed=seed)
        items, validation_ids = expand_cases(entries, config.parent)
        if validation_ids:
            if train_config.validation_case_ids:
                raise TrainSetupError(f"{config}: give validation cases either as validation_case_ids or as cases marked 'validation', not both")
            train_config = dataclasses.replace(train_config, validation_case_ids=validation_ids)
        result = train_segmentation(iter_cases(items, config.parent, workers), train_config, out, resume=resume,
                                    device=device, max_epochs_this_run=max_epochs_this_run, progress=_progress,
                                    max_seconds=None if max_minutes is None else 60.0 * max_minutes, workers=workers)
    except (ValueError, EngineError) as exc:  # setup, data, card, intake and resume errors
        raise typer.BadParameter(str(exc)) from None
    print(json.dumps({"package": str(result.package_dir), "sha256": result.package_hash,
                      "epochs": result.epochs_completed, "best_epoch": result.best_epoch,
                      "best_score": result.best_score, "stopped_early": result.stopped_early,
                      "validation_metrics": result.validation_metrics, "history": list(result.history)}, sort_keys=True))


__all__ = ["expand_cases", "iter_cases", "load_case", "load_openkbp_case", "load_train_config", "openkbp_paths", "train_seg_command"]
