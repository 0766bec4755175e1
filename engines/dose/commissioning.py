"""Commission the pencil-beam kernel: fit its Gaussian components to a machine's beam data.

The machine file stores the fitted components together with the beam data they were fitted to;
this module is how those numbers were produced (``python -m rtgrid.engines.dose.commissioning
<machine id>`` prints the fit and its residuals) and how a new linac's beam data becomes a model.
"""

from __future__ import annotations

import sys
from dataclasses import replace

import numpy as np
from scipy.optimize import least_squares

from rtgrid.engines.dose.kernel import KernelComponent, bixel_overlap, component_amplitudes, component_sigmas_mm, open_field_axis_dose
from rtgrid.engines.dose.machine import MachineModel, load_machine
from rtgrid.engines.dose.water import penumbra_80_20_mm

_FIELDS_PER_COMPONENT = ("amplitude", "buildup_per_mm", "attenuation_per_mm", "sigma0_mm", "sigma_slope")


def analytic_profile(components: tuple[KernelComponent, ...], field_mm: float, depth_mm: float,
                     positions_mm: np.ndarray, ssd_mm: float, sad_mm: float) -> np.ndarray:
    """Uncalibrated kernel dose across a square open field at ``depth_mm`` (positions in physical mm
    at that depth), without inverse square (it cancels in relative profiles)."""
    z = ssd_mm + depth_mm
    x_iso = np.asarray(positions_mm, dtype=np.float64) * sad_mm / z
    amp = component_amplitudes(components, np.array([depth_mm]))[:, 0]
    sig = component_sigmas_mm(components, np.array([depth_mm]))[:, 0] * sad_mm / z
    half = field_mm / 2.0
    return sum(a * bixel_overlap(x_iso, half, s) * bixel_overlap(0.0, half, s) for a, s in zip(amp, sig))


def _residuals(machine: MachineModel, components: tuple[KernelComponent, ...]) -> np.ndarray:
    sad = machine.sad_mm
    res = []
    for table in machine.pdd_tables:
        depths = np.asarray(table.depths_mm)
        curve = open_field_axis_dose(components, table.field_mm, depths, table.ssd_mm, sad)
        fine = np.arange(1.0, 40.0, 0.5)
        peak = open_field_axis_dose(components, table.field_mm, fine, table.ssd_mm, sad).max()
        res.extend((100.0 * curve / peak - np.asarray(table.percent)) / 1.0)
    of = machine.output_factors
    ref = open_field_axis_dose(components, of.reference_field_mm, np.array([of.depth_mm]), of.ssd_mm, sad)[0]
    for field, value in zip(of.fields_mm, of.values):
        calc = open_field_axis_dose(components, field, np.array([of.depth_mm]), of.ssd_mm, sad)[0] / ref
        res.append(100.0 * (calc - value))
    for pen in machine.penumbra:
        x = np.linspace(-pen.field_mm, pen.field_mm, 2001)
        prof = analytic_profile(components, pen.field_mm, pen.depth_mm, x, pen.ssd_mm, sad)
        res.append(2.0 * (penumbra_80_20_mm(x, prof) - pen.width_80_20_mm))
    return np.asarray(res)


def fit_kernel(machine: MachineModel) -> tuple[tuple[KernelComponent, ...], np.ndarray]:
    """Fit the kernel components (starting from the machine's own) to its PDD, output-factor and
    penumbra tables by least squares.

    Returns
    -------
    components, residuals
        The fitted components (primary amplitude kept at 1: the MU calibration sets the scale) and
        the residuals: PDD points in %, output factors in %, penumbra in half-millimetres.
    """
    start = machine.kernel
    x0 = np.array([getattr(c, f) for c in start for f in _FIELDS_PER_COMPONENT], dtype=np.float64)
    free = np.ones_like(x0, dtype=bool)
    free[0] = False  # primary amplitude: the scale is the MU calibration's business

    def build(x: np.ndarray) -> tuple[KernelComponent, ...]:
        vals = x0.copy()
        vals[free] = x
        per = len(_FIELDS_PER_COMPONENT)
        return tuple(
            replace(c, **{f: float(vals[i * per + j]) for j, f in enumerate(_FIELDS_PER_COMPONENT)})
            for i, c in enumerate(start)
        )

    lower = np.zeros(free.sum())
    lower[:] = 1e-6
    fit = least_squares(lambda x: _residuals(machine, build(x)), x0[free], bounds=(lower, np.inf), x_scale="jac")
    comps = build(fit.x)
    return comps, _residuals(machine, comps)


def main(argv: list[str]) -> int:
    machine = load_machine(argv[1] if len(argv) > 1 else "rtgrid-standard-6mv")
    comps, res = fit_kernel(machine)
    for c in comps:
        print(f"- name: {c.name}\n  amplitude: {c.amplitude:.6g}\n  buildup_per_mm: {c.buildup_per_mm:.6g}\n"
              f"  attenuation_per_mm: {c.attenuation_per_mm:.6g}\n  sigma0_mm: {c.sigma0_mm:.6g}\n"
              f"  sigma_slope: {c.sigma_slope:.6g}")
    print("residuals:", np.round(res, 2).tolist())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
