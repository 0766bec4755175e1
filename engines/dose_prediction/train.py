"""Train the 2.5D dose U-Net on OpenKBP patients, select it on validation patients, package it.

``python -m rtgrid.engines.dose_prediction.train --out DIR`` (``make model-dose``) trains the
shipped model's weights; :mod:`.calibrate` then fits its targets' calibration. Seeded: the same
configuration on the same data takes the same steps; the time bound (``max_minutes``) only stops
it early, and the card records how many steps it took.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rtgrid.engines.imaging.openkbp import OpenKBPPatient, load_openkbp_patient, openkbp_patients

from .inputs import (
    DISTANCE_RANGE_MM, N_CHANNELS, OAR_CHANNELS, REFERENCE_DOSE_GY, assemble_inputs, build_inputs, mirror_inputs,
    target_distances,
)
from .model import DoseUNet
from .package import load_dose_package, save_dose_package
from .predict import predict_dose, slice_windows
from .scores import dose_score, dvh_score

OPENKBP_PRESCRIPTIONS_GY = {"PTV70": 70.0, "PTV63": 63.0, "PTV56": 56.0}
"""OpenKBP's prescription levels (35 fractions)."""
CITATION = ("A. Babier, B. Zhang, R. Mahmood, K.L. Moore, T.G. Purdie, A.L. McNiven, T.C.Y. Chan, "
            "\"OpenKBP: The open-access knowledge-based planning grand challenge and dataset\", "
            "Med. Phys. 48 (2021) 5549-5561")


@dataclass(frozen=True)
class DoseTrainConfig:
    """How to train.

    Attributes
    ----------
    train_dir, val_dir : str
        Folders of OpenKBP ``pt_N.npz`` files.
    train_patients : int
        Use the first N training patients (0: all).
    select_patients : int
        Validation patients scored every ``select_every`` steps to keep the best weights.
    final_val_patients : int
        Validation patients scored at the end for the card (0: all).
    max_iterations, max_minutes : int, float
        Steps of the learning-rate schedule, and a wall-clock bound that may stop earlier.
    threads : int
        Torch CPU threads while training (one is fastest on a shared machine: more spin and wait).
    init_package : str
        A dose model package (same architecture) whose weights training starts from: a second
        cosine cycle from a trained model goes on where the first one's rate reached zero.
    flip_lr_probability : float
        Chance that a training slice is shown as its patient's mirror image (parotids swapped).
        Above 0 the card says ``test_time_mirror``: selection, validation and every prediction
        average each patient with its mirror image.
    """

    train_dir: str
    val_dir: str
    train_patients: int = 0
    select_patients: int = 4
    select_every: int = 250
    final_val_patients: int = 0
    max_iterations: int = 2000
    max_minutes: float = 20.0
    batch: int = 8
    lr: float = 1e-3
    base: int = 16
    depth: int = 4
    pool: int = 2
    context: int = 5
    seed: int = 20260312
    threads: int = 1
    log_every: int = 25
    init_package: str = ""
    flip_lr_probability: float = 0.0


@dataclass
class TrainedDoseModel:
    """A trained network, its card (ready to package) and its training loss per step."""

    model: DoseUNet
    card: dict[str, Any]
    losses: list[float]


def openkbp_inputs(patient: OpenKBPPatient) -> np.ndarray:
    """:func:`build_inputs` for an OpenKBP patient with its 70/63/56 Gy levels."""
    targets = [(dose, patient.masks[name]) for name, dose in OPENKBP_PRESCRIPTIONS_GY.items() if name in patient.masks]
    return build_inputs(patient.volume.voxels, patient.possible_dose_mask, patient.masks, targets,
                        patient.volume.spacing_mm)


class _Compact:
    """One training patient held small (int16 CT, bit-packed masks, float16 dose and target
    distances) for sampling."""

    def __init__(self, patient: OpenKBPPatient) -> None:
        self.ct = patient.volume.voxels.astype(np.int16)
        self.names = [n for n in (*OPENKBP_PRESCRIPTIONS_GY, *OAR_CHANNELS) if n in patient.masks]
        self.bits = np.zeros(self.ct.shape, dtype=np.uint16)
        for i, name in enumerate(self.names):
            self.bits |= patient.masks[name].astype(np.uint16) << i
        self.body = patient.possible_dose_mask.copy()
        self.dose = patient.dose_gy.astype(np.float16)
        levels = [patient.masks[n] for n in OPENKBP_PRESCRIPTIONS_GY if n in patient.masks]
        self.distances = target_distances(levels, patient.volume.spacing_mm).astype(np.float16)
        self.slices = np.flatnonzero(self.body.reshape(self.body.shape[0], -1).any(axis=1))

    def sample(self, k: int, context: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        half = context // 2
        lo, hi = max(0, k - half), min(self.ct.shape[0], k + half + 1)
        masks = {n: (self.bits[lo:hi] >> i) & 1 == 1 for i, n in enumerate(self.names)}
        levels = [(d, masks[n]) for n, d in OPENKBP_PRESCRIPTIONS_GY.items() if n in masks]
        part = assemble_inputs(self.ct[lo:hi], self.body[lo:hi], masks, levels, self.distances[:, lo:hi])
        full = np.zeros((part.shape[0], context, *part.shape[2:]), dtype=np.float32)
        full[:, lo - (k - half) : hi - (k - half)] = part
        x = slice_windows(full, np.array([half]), context)[0]
        return x, self.dose[k].astype(np.float32) / REFERENCE_DOSE_GY, self.body[k]


def patients_with_dose(folder: str | Path, limit: int = 0) -> Iterator[OpenKBPPatient]:
    """The OpenKBP patients of ``folder`` that have a clinical dose (the first ``limit``; 0: all),
    loaded one at a time; those without one are skipped (nothing to learn from or score against).

    Raises
    ------
    OpenKBPError
        The folder is missing or a file is malformed.
    """
    found = 0
    for path in openkbp_patients(Path(folder)):
        if limit and found >= limit:
            return
        patient = load_openkbp_patient(path)
        if patient.dose_gy is not None:
            found += 1
            yield patient


def evaluate(model: DoseUNet, patients: list[OpenKBPPatient], *, context: int, mirror: bool = False,
             target_calibration: Mapping[str, Any] | None = None) -> dict[str, float]:
    """Mean OpenKBP dose and DVH scores (Gy) of ``model`` over ``patients`` (the options: see
    :func:`~rtgrid.engines.dose_prediction.predict_dose`)."""
    doses, dvhs = [], []
    for patient in patients:
        predicted = predict_dose(model, openkbp_inputs(patient), patient.possible_dose_mask, context=context,
                                 mirror=mirror, target_calibration=target_calibration)
        doses.append(dose_score(predicted, patient.dose_gy, patient.possible_dose_mask))
        dvhs.append(dvh_score(predicted, patient.dose_gy, patient.masks, patient.volume.voxel_volume_mm3))
    return {"dose_score_gy": round(float(np.mean(doses)), 4), "dvh_score_gy": round(float(np.mean(dvhs)), 4),
            "patients": len(patients)}


def _log(message: str) -> None:
    print(f"[dose-train] {message}", file=sys.stderr, flush=True)


def train_dose_model(config: DoseTrainConfig, *, name: str = "rtgrid-hn-dose", version: str = "1") -> TrainedDoseModel:
    """Train, keep the weights best on the selection patients, score them on validation.

    Parameters
    ----------
    config : DoseTrainConfig
    name, version : str
        Recorded in the card.

    Returns
    -------
    TrainedDoseModel

    Raises
    ------
    OpenKBPError
        A data folder is missing or a file is malformed.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _train(config, name, version)
    finally:
        torch.set_num_threads(threads)


def _train(config: DoseTrainConfig, name: str, version: str) -> TrainedDoseModel:
    start = time.monotonic()
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    train = [_Compact(p) for p in patients_with_dose(config.train_dir, config.train_patients)]
    selection = list(patients_with_dose(config.val_dir, config.select_patients))
    _log(f"{len(train)} training patients, {len(selection)} selection patients loaded in {time.monotonic() - start:.0f} s")
    model = DoseUNet(N_CHANNELS, context=config.context, base=config.base, depth=config.depth, pool=config.pool).to(device)
    initial = _initial_weights(model, config)
    mirror = config.flip_lr_probability > 0
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(1.0, step / config.max_iterations))))
    best = (math.inf, copy.deepcopy(model.state_dict()), 0)
    losses: list[float] = []
    deadline = start + 60.0 * config.max_minutes
    step = 0
    while step < config.max_iterations and time.monotonic() < deadline:
        model.train()
        batch = []
        for _ in range(config.batch):
            patient = train[rng.integers(len(train))]
            x, y, m = patient.sample(int(rng.choice(patient.slices)), config.context)
            # Drawn only when mirroring is on: a run without it takes the random steps it always took.
            if config.flip_lr_probability > 0 and rng.random() < config.flip_lr_probability:
                x, y, m = _mirror_window(x, config.context), y[:, ::-1].copy(), m[:, ::-1].copy()
            batch.append((x, y, m))
        x, y, m = (torch.from_numpy(np.stack(a)).to(device) for a in zip(*batch))
        with torch.autocast("cuda", enabled=device == "cuda"):
            out = model(x)
        loss = (out.float() - y).abs()[m].mean()  # MAE over the possible dose mask
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        step += 1
        losses.append(float(loss.detach()))
        if step % config.log_every == 0:
            recent = np.mean(losses[-config.log_every :]) * REFERENCE_DOSE_GY
            _log(f"step {step}/{config.max_iterations} loss {recent:.2f} Gy, {time.monotonic() - start:.0f} s")
        if selection and (step % config.select_every == 0 or step == config.max_iterations):
            score = evaluate(model, selection, context=config.context, mirror=mirror)["dose_score_gy"]
            _log(f"step {step}: selection dose score {score:.3f} Gy")
            if score < best[0]:
                best = (score, copy.deepcopy(model.state_dict()), step)
    if selection and best[2] != step:
        score = evaluate(model, selection, context=config.context, mirror=mirror)["dose_score_gy"]
        if score < best[0]:
            best = (score, copy.deepcopy(model.state_dict()), step)
    if selection:
        model.load_state_dict(best[1])
    model.eval()
    validation_patients = list(patients_with_dose(config.val_dir, config.final_val_patients))
    validation = evaluate(model, validation_patients, context=config.context, mirror=mirror)
    _log(f"kept step {best[2] if selection else step}; validation {validation}")
    near, far = DISTANCE_RANGE_MM
    card = {
        "name": name,
        "version": version,
        "task": "3D dose prediction (Gy per voxel on the CT grid) for head-and-neck IMRT",
        "architecture": {"channels": N_CHANNELS, "context": config.context, "base": config.base, "depth": config.depth,
                         "pool": config.pool},
        "inputs": {"ct": "HU clipped to [-1000, 1500] / 1000",
                   "levels": "one channel per prescription level, highest first: its dose / 70 Gy in its PTV (higher wins)",
                   "organs_at_risk": list(OAR_CHANNELS), "body": "possible dose mask",
                   "target_distances": "per level, highest first: signed 3D distance to its PTV (mm, negative "
                                       f"inside) clipped to [{near:g}, {far:g}] / {far:g}; 1 for an absent level",
                   "slices": f"{config.context} adjacent axial slices stacked as channels"},
        "output": "dose in Gy, zero outside the body",
        **({"test_time_mirror": True} if mirror else {}),
        "training_data": {"source": "OpenKBP grand challenge training set", "folder": "data/openkbp/train",
                          "patients": len(train)},
        "citation": CITATION,
        "licence": "OpenKBP data: MIT licence; model weights: as rtgrid",
        "split": {"train": "OpenKBP train (all with dose)" if not config.train_patients else f"first {len(train)} of OpenKBP train",
                  "selection": f"first {len(selection)} OpenKBP validation patients (best dose score of the checkpoints)",
                  "validation": f"{validation['patients']} OpenKBP validation patients"},
        "training": {**dataclasses.asdict(config), "steps_done": step, "step_kept": best[2] if selection else step,
                     "minutes": round((time.monotonic() - start) / 60.0, 1), "device": device,
                     **({"initial_package": initial} if initial else {})},
        "validation": validation,
    }
    # Folders are where this run found the data, not part of the model's identity.
    for key in ("train_dir", "val_dir", "threads", "init_package"):
        card["training"].pop(key)
    return TrainedDoseModel(model.cpu(), card, losses)


def _mirror_window(x: np.ndarray, context: int) -> np.ndarray:
    """A training window (``[context * N_CHANNELS, y, x]``, see ``slice_windows``) of the mirrored patient."""
    slots = x.reshape(context, N_CHANNELS, *x.shape[1:]).transpose(1, 0, 2, 3)
    return np.ascontiguousarray(mirror_inputs(slots).transpose(1, 0, 2, 3)).reshape(x.shape)


def _initial_weights(model: DoseUNet, config: DoseTrainConfig) -> dict[str, Any]:
    """Load ``config.init_package``'s weights into ``model``; its identity for the card ({} without one).

    A package that took fewer input channels (a version before the later channels were added)
    is widened: the new channels start with zero weights, so the network starts as that package.

    Raises
    ------
    ValueError
        The package's architecture is not the configuration's.
    """
    if not config.init_package:
        return {}
    start, card, sha256 = load_dose_package(config.init_package)
    expected = {"channels": N_CHANNELS, "context": config.context, "base": config.base, "depth": config.depth,
                "pool": config.pool}
    found = card["architecture"]
    if {**found, "channels": N_CHANNELS} != expected or found["channels"] > N_CHANNELS:
        raise ValueError(f"init package {config.init_package} is {found}, the configuration {expected}")
    state = start.state_dict()
    if found["channels"] < N_CHANNELS:
        first = DoseUNet.FIRST_CONV_WEIGHT
        state[first] = _widened(state[first], found["channels"], config.context)
    model.load_state_dict(state)
    return {"name": card["name"], "version": card["version"], "sha256": sha256,
            "steps": card["training"]["steps_done"]}


def _widened(weight: torch.Tensor, channels: int, context: int) -> torch.Tensor:
    """The first convolution's ``[out, context * channels, k, k]`` weights for ``N_CHANNELS`` input
    channels per slice: each slice's first ``channels`` as they were, the rest zero."""
    out, _, *kernel = weight.shape
    wide = weight.new_zeros((out, context, N_CHANNELS, *kernel))
    wide[:, :, :channels] = weight.reshape(out, context, channels, *kernel)
    return wide.reshape(out, context * N_CHANNELS, *kernel)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train the head-and-neck dose prediction model and package it.")
    parser.add_argument("--train", default="../shared/data/openkbp/train")
    parser.add_argument("--val", default="../shared/data/openkbp/validation")
    parser.add_argument("--out", required=True, help="package folder to write")
    parser.add_argument("--iterations", type=int, default=DoseTrainConfig.max_iterations)
    parser.add_argument("--minutes", type=float, default=DoseTrainConfig.max_minutes)
    parser.add_argument("--train-patients", type=int, default=0)
    parser.add_argument("--lr", type=float, default=DoseTrainConfig.lr, help="peak learning rate")
    parser.add_argument("--init", default="", help="a dose model package to start from (a warm restart)")
    parser.add_argument("--version", default="1", help="the version in the card")
    parser.add_argument("--flip", type=float, default=0.0, help="chance of a mirrored training slice (flip_lr_probability)")
    parser.add_argument("--batch", type=int, default=DoseTrainConfig.batch)
    parser.add_argument("--select-patients", type=int, default=DoseTrainConfig.select_patients)
    parser.add_argument("--select-every", type=int, default=DoseTrainConfig.select_every)
    args = parser.parse_args(argv)
    config = DoseTrainConfig(args.train, args.val, train_patients=args.train_patients,
                             max_iterations=args.iterations, max_minutes=args.minutes, lr=args.lr,
                             init_package=args.init, flip_lr_probability=args.flip, batch=args.batch,
                             select_patients=args.select_patients, select_every=args.select_every)
    trained = train_dose_model(config, version=args.version)
    content_hash = save_dose_package(args.out, trained.model, trained.card)
    print(f"{args.out}: sha256 {content_hash}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
