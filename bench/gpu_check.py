"""GPU check: every CUDA path against the CPU path, with the stated tolerances and throughput.

``python -m bench.gpu_check`` (``make gpu-check``) runs, each in its own try block with its own
time budget, on one CUDA device against the CPU:

- ``dij``: the pencil-beam dose influence on cupy (``device="gpu"``) against numpy, on TG-119
  (9 beams, 3 mm dose grid) and on a 512x512 digital phantom (its first two beams on the CPU).
  Tolerance (tests/engines/dose/test_dose_pencil_beam.py): max |CPU - GPU| <= 1e-4 max |CPU|;
- ``solver``: the torch fluence solver on CUDA against the same solver on the CPU, on the TG-119
  matrix. Tolerance (tests/engines/optimization/test_fluence_optimization.py): objectives within
  10 %, D10 and D50 of every structure of the order within 1.5 Gy;
- ``plan``: the whole TG-119 plan (far-scatter correction and goal rounds) with the torch solver
  on CUDA: it must finish with a finite dose; its seconds are a figure;
- ``seg_training``: one short epoch of segmentation training on CUDA under AMP (bf16 where the
  GPU has it, else fp16 with loss scaling): the loss must be finite;
- ``seg_inference``: the built-in head-and-neck model on an OpenKBP validation patient (the
  digital phantom's model when ../shared/data is absent), fp16 and ``auto`` (bf16) autocast on
  CUDA against fp32 on the CPU: DSC >= 0.99 for every class either side labels;
- ``dose_prediction``: the built-in dose model under CUDA autocast against the CPU: max |CPU -
  CUDA| <= 1 Gy (set here, as the code states none: 1.4 % of the 70 Gy reference dose, well under
  the model's own 3.6 Gy dose score).

Figures: dose influence seconds (TG-119, 512x512), solver and plan seconds, slices per second,
dose prediction seconds. Without a CUDA device (neither torch nor cupy sees one) it prints
``no CUDA device`` and exits 0 at once. ``--device cpu --tiny`` runs the same comparisons CPU
against CPU on tiny inputs: the plumbing's self-test (tests/project/test_gpu_check.py).

Human-readable lines go to stderr; stdout ends with exactly one JSON line
``{"checks": {name: {"passed": bool, ...}}, "figures": {...}, "all_passed": bool}``.
Exit code 1 when a check fails. The budgets are enforced between Python operations (SIGALRM),
so a check stuck inside one long native call overruns until it returns; an import in progress
is let finish first.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OPENKBP_VALIDATION = ROOT.parent / "shared" / "data" / "openkbp" / "validation"
TG119_ORDER = ROOT / "engines" / "optimization" / "example_order.yaml"
GANTRY_ANGLES_DEG = tuple(float(a) for a in range(0, 360, 40))

DIJ_REL_MAX_ERROR = 1e-4
SOLVER_OBJECTIVE_REL = 0.10
SOLVER_DVH_GY = 1.5
SEG_MIN_DSC = 0.99
DOSE_PRED_MAX_ABS_GY = 1.0


class CheckTimeout(Exception):
    """A check ran past its time budget."""


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Sizes:
    """Problem sizes and time budgets (s) of one run."""

    tiny: bool
    budgets_s: dict[str, float]
    solver_iterations: int
    plan_iterations: int
    training_iterations: int
    seg_slices: int  # 0: the whole patient
    dose_slices: int  # 0: the whole patient
    plan_goal_rounds: int | None = None  # None: optimize_plan's default


# The plan's budget as measured: 53 s on one H200 (2026-12-04; 147 s on 2 CPU cores), with room for a slower GPU.
FULL = Sizes(False, {"dij": 90, "solver": 45, "plan": 180, "seg_training": 30, "seg_inference": 45, "dose_prediction": 30},
             solver_iterations=150, plan_iterations=80, training_iterations=20, seg_slices=0, dose_slices=0)
TINY = Sizes(True, {"dij": 20, "solver": 15, "plan": 15, "seg_training": 20, "seg_inference": 20, "dose_prediction": 15},
             solver_iterations=15, plan_iterations=10, training_iterations=2, seg_slices=1, dose_slices=2,
             plan_goal_rounds=0)


def label(device: str) -> str:
    """The name of the device under test in figures: ``cuda``, or ``cpu_selftest`` (beside ``cpu``)."""
    return "cpu_selftest" if device == "cpu" else device.split(":")[0]


def cuda_present() -> bool:
    """True when torch or cupy sees a CUDA device."""
    try:
        import torch

        if torch.cuda.is_available():
            return True
    except ImportError:
        pass
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no cupy, or no driver
        return False


IMPORT_GRACE_S = 0.05


def _inside_import(frame) -> bool:
    """Whether ``frame`` or one of its callers runs Python's import machinery."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


@contextlib.contextmanager
def time_budget(seconds: float) -> Iterator[None]:
    """Raise :class:`CheckTimeout` in the main thread after ``seconds``."""

    def expire(signum, frame):  # noqa: ARG001
        if _inside_import(frame):
            # An exception inside an import leaves a half-initialized module behind (torch then
            # fails with "initialization failed" later): let the import finish, then expire.
            signal.setitimer(signal.ITIMER_REAL, IMPORT_GRACE_S)
            return
        raise CheckTimeout(f"ran past its budget of {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def sync(device: str) -> None:
    """Wait for queued CUDA work, so that timings hold it."""
    if device == "cpu":
        return
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    with contextlib.suppress(Exception):
        import cupy

        cupy.cuda.Device().synchronize()


def timed(fn: Callable[[], object], device: str) -> tuple[object, float]:
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    return result, time.perf_counter() - start


# --- cases -------------------------------------------------------------------------------------

@dataclass
class PlanCase:
    """A planning case: density and structures on the CT grid, the order's text or path."""

    name: str
    density: object  # Volume of relative electron density
    masks: dict[str, np.ndarray]
    target: str
    body: str
    order: str | Path
    patient_position: str = "HFS"
    dose_grid_mm: float = 3.0


def phantom_case(shape: tuple[int, int, int], spacing_mm: tuple[float, float, float], dose_grid_mm: float) -> PlanCase:
    """The digital thorax phantom with its lung-tumour order."""
    from rtgrid.engines.dose.density import hu_to_relative_electron_density
    from rtgrid.engines.phantom.digital_patient import make_phantom
    from rtgrid.engines.phantom.plan_inputs import PHANTOM_ORDER

    phantom = make_phantom(shape, spacing_mm)
    density = phantom.ct.with_voxels(hu_to_relative_electron_density(phantom.ct.voxels))
    name = f"phantom {shape[2]}x{shape[1]}x{shape[0]}"
    return PlanCase(name, density, dict(phantom.labels), "PTV", "BODY", PHANTOM_ORDER, dose_grid_mm=dose_grid_mm)


def tg119_case() -> PlanCase:
    from rtgrid.engines.phantom.tg119 import load_tg119

    case = load_tg119()
    return PlanCase("TG-119", case.relative_electron_density, dict(case.structures), "OuterTarget", "BODY",
                    TG119_ORDER, case.patient_position)


def influence(case: PlanCase, device: str, angles: tuple[float, ...] = GANTRY_ANGLES_DEG):
    from rtgrid.engines.dose.machine import load_machine
    from rtgrid.engines.optimization.coplanar_plan import compute_dose_influence

    return compute_dose_influence(case.density, case.masks, case.target, case.body, load_machine(), angles,
                                  dose_grid_mm=case.dose_grid_mm, patient_position=case.patient_position,
                                  device="gpu" if device.startswith("cuda") else "cpu")


def rel_max_error(reference, other) -> float:
    """max |reference - other| / max |reference| of two sparse matrices of the same shape."""
    if reference.shape != other.shape:
        raise ValueError(f"shapes differ: {reference.shape} against {other.shape}")
    scale = float(abs(reference).max())
    return float(abs(reference - other).max()) / scale if scale > 0 else float(abs(other).max())


# --- checks ------------------------------------------------------------------------------------

def check_dij(device: str, sizes: Sizes, state: dict) -> dict:
    """Dose influence on ``device`` against the CPU: relative max error and seconds."""
    out: dict = {"tolerance_rel_max_error": DIJ_REL_MAX_ERROR}
    warm = phantom_case((4, 32, 32), (8.0, 8.0, 8.0), 8.0)
    influence(warm, device, GANTRY_ANGLES_DEG[:1])  # cupy compiles its kernels on first use
    cases = ([("phantom_tiny", phantom_case((6, 48, 48), (6.0, 6.0, 6.0), 6.0))] if sizes.tiny
             else [("tg119", tg119_case()), ("512x512", phantom_case((60, 512, 512), (1.0, 1.0, 2.5), 3.0))])
    errors = []
    all_beams = GANTRY_ANGLES_DEG[::4] if sizes.tiny else GANTRY_ANGLES_DEG
    for i, (key, case) in enumerate(cases):
        dev_inf, dev_s = timed(lambda c=case: influence(c, device, all_beams), device)
        # The 512x512 case compares its first two beams only: the CPU path would take most of the budget.
        angles = all_beams if i == 0 else all_beams[:2]
        cpu_inf, cpu_s = timed(lambda c=case, a=angles: influence(c, "cpu", a), "cpu")
        columns = cpu_inf.dij.shape[1]
        error = rel_max_error(cpu_inf.dij, dev_inf.dij[:, :columns].tocsr())
        errors.append(error)
        out[key] = {"case": case.name, "beams_compared": len(angles), "rel_max_error": error,
                    "nnz": int(dev_inf.dij.nnz), "shape": list(dev_inf.dij.shape)}
        state.setdefault("dij_s", {})[f"dij_{key}_s_{label(device)}"] = round(dev_s, 3)
        state["dij_s"][f"dij_{key}_s_cpu" + ("" if len(angles) == len(all_beams) else f"_{len(angles)}_beams")] = round(cpu_s, 3)
        say(f"dij {case.name}: {device} {dev_s:.2f} s, cpu {cpu_s:.2f} s ({len(angles)} beams), rel max error {error:.2e}")
        if i == 0:
            state["plan_case"], state["plan_influence"] = case, cpu_inf
    out["passed"] = max(errors) <= DIJ_REL_MAX_ERROR
    return out


def _plan_input(state: dict, sizes: Sizes):
    """The first dij case and its CPU influence (computed here when the dij check did not)."""
    if "plan_influence" not in state:
        case = phantom_case((6, 48, 48), (6.0, 6.0, 6.0), 6.0) if sizes.tiny else tg119_case()
        angles = GANTRY_ANGLES_DEG[::4] if sizes.tiny else GANTRY_ANGLES_DEG
        state["plan_case"], state["plan_influence"] = case, influence(case, "cpu", angles)
    from rtgrid.engines.optimization.order import load_order

    inf = state["plan_influence"]
    return state["plan_case"], inf, load_order(state["plan_case"].order, inf.masks)


def check_solver(device: str, sizes: Sizes, state: dict) -> dict:
    """The torch fluence solver on ``device`` against itself on the CPU."""
    from rtgrid.engines.optimization.dvh import dose_at_volume
    from rtgrid.engines.optimization.fluence import optimize_fluence

    case, inf, order = _plan_input(state, sizes)
    positions = [np.stack([g.iy, g.ix], axis=1) for g in inf.bixels]  # as optimize_plan passes them
    dut = label(device)
    runs, seconds = {}, {}
    for name, dev in ((dut, device), ("cpu", "cpu")):
        runs[name], seconds[name] = timed(lambda d=dev: optimize_fluence(
            inf.dij, inf.masks, order, bixel_grids=positions, solver="torch", max_iter=sizes.solver_iterations, device=d), dev)
    f_dev, f_cpu = (runs[n].objective_history[-1] for n in (dut, "cpu"))
    objective_rel = abs(f_dev - f_cpu) / max(abs(f_cpu), 1e-30)
    dvh = {}
    for name in order.structures:
        idx = inf.masks[name].reshape(-1)
        for v in (10.0, 50.0):
            a, b = (dose_at_volume(runs[n].dose_gy[idx].astype(np.float64), v) for n in ("cpu", dut))
            dvh[f"{name} D{v:g}"] = round(abs(a - b), 4)
    worst = max(dvh.values())
    say(f"solver {case.name}: {dut} {seconds[dut]:.2f} s, cpu {seconds['cpu']:.2f} s, objective rel diff "
        f"{objective_rel:.3g}, worst DVH diff {worst:.3f} Gy")
    return {"case": case.name, "iterations": {n: r.iterations for n, r in runs.items()}, "objective_rel_diff": objective_rel,
            "dvh_abs_diff_gy": dvh, "tolerance_objective_rel": SOLVER_OBJECTIVE_REL, "tolerance_dvh_gy": SOLVER_DVH_GY,
            "device_used": runs[dut].device, "seconds": {n: round(t, 3) for n, t in seconds.items()},
            "passed": objective_rel <= SOLVER_OBJECTIVE_REL and worst <= SOLVER_DVH_GY and runs[dut].device == device}


def check_plan(device: str, sizes: Sizes, state: dict) -> dict:
    """The whole plan with the torch solver on ``device``: it finishes, its dose is finite."""
    from rtgrid.engines.dose.machine import load_machine
    from rtgrid.engines.optimization.coplanar_plan import optimize_plan

    case, inf, order = _plan_input(state, sizes)
    rounds = {} if sizes.plan_goal_rounds is None else {"goal_rounds": sizes.plan_goal_rounds}
    plan, seconds = timed(lambda: optimize_plan(inf, order, load_machine(), case.body, solver="torch",
                                                max_iter=sizes.plan_iterations, device=device, **rounds), device)
    finite = bool(np.isfinite(plan.dose_gy).all())
    say(f"plan {case.name}: {seconds:.2f} s on {plan.fluence.device}, dose finite: {finite}")
    return {"case": case.name, "seconds": round(seconds, 3), "optimization_s": round(plan.optimization_s, 3),
            "final_dose_s": round(plan.final_dose_s, 3), "device_used": plan.fluence.device,
            "max_dose_gy": float(np.max(plan.dose_gy)), "passed": finite and plan.fluence.device == device}


def check_seg_training(device: str, sizes: Sizes, state: dict) -> dict:
    """A short epoch of the phantom model's training on ``device`` (AMP on CUDA): finite loss."""
    import torch

    from rtgrid.engines.phantom.digital_patient import make_phantom
    from rtgrid.engines.segmentation.deep.phantom_model import PHANTOM_MODEL_CONFIG
    from rtgrid.engines.segmentation.deep.training import TrainCase, train_segmentation

    shape = (4, 32, 32) if sizes.tiny else (12, 128, 128)
    cases = [TrainCase(f"phantom-seed{s}", (p := make_phantom(shape, (3.0, 3.0, 3.0), seed=s)).ct, p.labels) for s in (11, 12)]
    config = replace(PHANTOM_MODEL_CONFIG, max_epochs=1, iterations_per_epoch=sizes.training_iterations)
    if sizes.tiny:
        config = replace(config, patch_size=(32, 32), batch_size=2, input_spacing_mm=(6.0, 6.0),
                         architecture_kwargs={"base_channels": 4, "depth": 2})
    amp = "off" if device == "cpu" else ("bf16" if torch.cuda.is_bf16_supported() else "fp16 with loss scaling")
    with tempfile.TemporaryDirectory() as tmp:
        result, seconds = timed(lambda: train_segmentation(cases, config, tmp, resume=False, device=device), device)
    loss = float(result.history[-1]["train_loss"])
    say(f"seg training: {config.iterations_per_epoch} iterations on {device} (AMP {amp}) in {seconds:.2f} s, loss {loss:.4f}")
    return {"iterations": config.iterations_per_epoch, "amp": amp, "train_loss": loss, "seconds": round(seconds, 3),
            "passed": math.isfinite(loss)}


def class_dsc(reference: np.ndarray, other: np.ndarray) -> dict[int, float]:
    """DSC per class label > 0 present in either map."""
    out = {}
    for label in np.union1d(np.unique(reference), np.unique(other)):
        if label == 0:
            continue
        a, b = reference == label, other == label
        out[int(label)] = 2.0 * float(np.count_nonzero(a & b)) / float(np.count_nonzero(a) + np.count_nonzero(b))
    return out


def _openkbp_patient(slices: int, state: dict):
    """The first OpenKBP validation patient and the z range to use (its middle ``slices`` slices
    when > 0, else all), or ``(None, None)`` without the shared data."""
    from rtgrid.engines.imaging.openkbp import load_openkbp_patient, openkbp_patients

    if not OPENKBP_VALIDATION.is_dir():
        return None, None
    if "openkbp_patient" not in state:
        state["openkbp_patient"] = load_openkbp_patient(openkbp_patients(OPENKBP_VALIDATION)[0])
    patient = state["openkbp_patient"]
    if not slices:
        return patient, slice(None)
    nz = patient.volume.shape[0]
    body_slices = np.flatnonzero(patient.possible_dose_mask.reshape(nz, -1).any(axis=1))
    start = max(0, (int(body_slices[len(body_slices) // 2]) if body_slices.size else nz // 2) - slices // 2)
    return patient, slice(start, start + slices)


def check_seg_inference(device: str, sizes: Sizes, state: dict) -> dict:
    """Labels on ``device`` (fp16 and auto autocast) against fp32 on the CPU: DSC per class."""
    from rtgrid.engines.segmentation.deep.inference import SegmentationRunner

    patient, keep = _openkbp_patient(sizes.seg_slices, state)
    with tempfile.TemporaryDirectory() as tmp:
        if patient is not None:
            from rtgrid.engines.segmentation.deep.builtin import HN_OAR_PACKAGE

            package, source = HN_OAR_PACKAGE, f"OpenKBP {patient.patient_id}"
            hu, spacing = patient.volume.voxels[keep], patient.volume.spacing_mm
        else:  # no shared data here: the phantom's own model, trained now
            from rtgrid.engines.phantom.digital_patient import make_phantom
            from rtgrid.engines.segmentation.deep.phantom_model import train_phantom_model

            package = train_phantom_model(tmp, device=device).package_dir
            phantom = make_phantom((max(sizes.seg_slices, 4) if sizes.seg_slices else 64, 256, 256))  # 4 slices at least
            hu, spacing, source = phantom.ct.voxels, phantom.ct.spacing_mm, "digital phantom"
        cpu = SegmentationRunner(package, device="cpu", batch_slices=16, precision="fp32")
        reference, cpu_s = timed(lambda: cpu.predict_slices(hu, spacing), "cpu")
        dut = label(device)
        out: dict = {"source": source, "slices": int(hu.shape[0]), "slice_shape": list(hu.shape[1:]),
                     "tolerance_min_dsc": SEG_MIN_DSC, "cpu_slices_per_s": round(hu.shape[0] / cpu_s, 2)}
        passed = True
        for precision in ("fp16", "auto"):
            runner = SegmentationRunner(package, device=device, batch_slices=64, precision=precision)
            if device != "cpu":
                runner.predict_slices(hu[:1], spacing)  # warm-up: CUDA context, cuDNN autotuning
            labels, seconds = timed(lambda r=runner: r.predict_slices(hu, spacing), device)
            dsc = class_dsc(reference, labels)
            autocast = str(runner.autocast_dtype).replace("torch.", "") if runner.autocast_dtype else "fp32"
            worst = min(dsc.values()) if dsc else None
            # Nothing labelled by either side proves nothing: a failure, not a pass.
            ok = worst is not None and worst >= SEG_MIN_DSC
            passed &= ok
            out[precision] = {"autocast": autocast, "dsc_per_class": {str(k): round(v, 5) for k, v in dsc.items()},
                              "min_dsc": worst, "slices_per_s": round(hu.shape[0] / seconds, 2), "passed": ok}
            say(f"seg inference {source} {precision} ({autocast}) on {device}: min DSC {worst}, "
                f"{hu.shape[0] / seconds:.1f} slices/s (cpu fp32 {hu.shape[0] / cpu_s:.1f})")
    out["passed"] = passed
    return out


def check_dose_prediction(device: str, sizes: Sizes, state: dict) -> dict:
    """The dose model on ``device`` (autocast on CUDA) against the CPU: max |difference| in Gy."""
    from rtgrid.engines.dose_prediction import load_dose_package, predict_dose, prediction_options
    from rtgrid.engines.dose_prediction.inputs import build_inputs
    from rtgrid.engines.dose_prediction.train import openkbp_inputs

    model, card, _ = load_dose_package()
    options = prediction_options(card)
    patient, keep = _openkbp_patient(sizes.dose_slices, state)
    if patient is not None:
        inputs, body = openkbp_inputs(patient)[:, keep], patient.possible_dose_mask[keep]
        source = f"OpenKBP {patient.patient_id}"
    else:
        from rtgrid.engines.phantom.digital_patient import make_phantom

        phantom = make_phantom((max(sizes.dose_slices, 4) if sizes.dose_slices else 64, 128, 128), (3.0, 3.0, 3.0))
        body = phantom.labels["BODY"]
        inputs = build_inputs(phantom.ct.voxels, body, phantom.labels, [(60.0, phantom.labels["PTV"])],
                              phantom.ct.spacing_mm)
        source = "digital phantom"
    cpu, cpu_s = timed(lambda: predict_dose(model, inputs, body, device="cpu", **options), "cpu")
    if device != "cpu":
        predict_dose(model, inputs[:, :1], body[:1], context=options["context"], device=device)  # warm-up
    dev, dev_s = timed(lambda: predict_dose(model, inputs, body, device=device, **options), device)
    diff = np.abs(cpu.astype(np.float64) - dev)
    max_abs = float(diff.max())
    mean_abs = float(diff[body].mean()) if body.any() else 0.0
    dut = label(device)
    say(f"dose prediction {source}: max |cpu - {dut}| {max_abs:.3f} Gy, mean {mean_abs:.4f} Gy in the body; "
        f"{dut} {dev_s:.2f} s, cpu {cpu_s:.2f} s")
    return {"source": source, "slices": int(body.shape[0]), "max_abs_diff_gy": max_abs, "mean_abs_diff_gy_in_body": mean_abs,
            "tolerance_max_abs_gy": DOSE_PRED_MAX_ABS_GY, "seconds": {dut: round(dev_s, 3), "cpu": round(cpu_s, 3)},
            "passed": max_abs <= DOSE_PRED_MAX_ABS_GY}


CHECKS: dict[str, Callable[[str, Sizes, dict], dict]] = {
    "dij": check_dij, "solver": check_solver, "plan": check_plan, "seg_training": check_seg_training,
    "seg_inference": check_seg_inference, "dose_prediction": check_dose_prediction,
}


def figures_of(checks: dict, state: dict, device: str) -> dict:
    """The throughput figures the issue asks for, flat."""
    dev = label(device)
    figures = dict(state.get("dij_s", {}))
    if "seconds" in checks.get("solver", {}):
        figures.update({f"solver_s_{d}": s for d, s in checks["solver"]["seconds"].items()})
    if "seconds" in checks.get("plan", {}):
        figures[f"plan_s_{dev}"] = checks["plan"]["seconds"]
    if "seconds" in checks.get("seg_training", {}):
        figures[f"seg_training_s_{dev}"] = checks["seg_training"]["seconds"]
    seg = checks.get("seg_inference", {})
    for precision in ("fp16", "auto"):
        if precision in seg:
            figures[f"seg_slices_per_s_{dev}_{precision}"] = seg[precision]["slices_per_s"]
    if "cpu_slices_per_s" in seg:
        figures["seg_slices_per_s_cpu_fp32"] = seg["cpu_slices_per_s"]
    if "seconds" in checks.get("dose_prediction", {}):
        figures.update({f"dose_prediction_s_{d}": s for d, s in checks["dose_prediction"]["seconds"].items()})
    return figures


def run_checks(device: str, sizes: Sizes, names: list[str]) -> dict:
    """Run the named checks, each in its own try block and time budget."""
    import torch

    if device.startswith("cuda"):
        figures_device = {"cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cupy only"}
    else:
        figures_device = {"cuda_device": None}
    state: dict = {}
    checks: dict = {}
    for name in names:
        budget = sizes.budgets_s[name]
        start = time.perf_counter()
        try:
            with time_budget(budget):
                checks[name] = CHECKS[name](device, sizes, state)
        except Exception as exc:  # one broken path must not hide the others' results
            checks[name] = {"passed": False, "error": f"{type(exc).__name__}: {exc}"}
            say(f"{name}: FAILED {type(exc).__name__}: {exc}")
            if not isinstance(exc, CheckTimeout):
                say(traceback.format_exc(limit=4))
        checks[name]["check_s"] = round(time.perf_counter() - start, 3)
        checks[name]["budget_s"] = budget
    figures = {**figures_device, **figures_of(checks, state, device)}
    return {"checks": checks, "figures": figures, "all_passed": all(c["passed"] for c in checks.values())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # cpu: the self-test
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # tiny inputs (self-test)
    parser.add_argument("--checks", default=",".join(CHECKS), help=f"comma-separated subset of {', '.join(CHECKS)}")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--budget-scale", type=float, default=1.0, help="multiply every check's time budget (a slower GPU)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.checks.split(",") if n.strip()]
    unknown = sorted(set(names) - set(CHECKS))
    if unknown:
        parser.error(f"unknown checks {unknown}; known: {list(CHECKS)}")
    if args.device != "cpu":
        if not args.device.startswith("cuda"):
            parser.error(f"--device must be cuda, cuda:N or cpu, got {args.device!r}")
        if not cuda_present():
            print("no CUDA device", flush=True)
            return 0
    if not args.budget_scale > 0:
        parser.error(f"--budget-scale must be > 0, got {args.budget_scale}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    sizes = TINY if args.tiny else FULL
    sizes = replace(sizes, budgets_s={k: v * args.budget_scale for k, v in sizes.budgets_s.items()})
    result = run_checks(args.device, sizes, names)
    result["device"] = args.device
    result["tiny"] = args.tiny
    print(json.dumps(result, default=float))
    return 0 if result["all_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
