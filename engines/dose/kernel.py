"""The finite-size pencil-beam kernel: a sum of depth-dependent Gaussians convolved with a square bixel.

Model (documented in the machine file under ``dose_kernel``): a bixel of side ``b`` (mm, at the
isocenter plane) centred at ``(Xb, Yb)`` delivers, per unit fluence weight, at a point with
iso-plane BEV coordinates ``(X, Y)``, source-axis distance ``z`` and radiological depth ``d``::

    D = C * (SAD / z)**2 * sum_n A_n(d) * F(X - Xb; s_n) * F(Y - Yb; s_n)
    A_n(d) = a_n * (1 - exp(-beta_n d)) * exp(-mu_n d)          (build-up and attenuation)
    sigma_n(d) = sigma0_n + sigma1_n * d                         (physical mm at depth)
    s_n = sigma_n(d) * SAD / z                                   (the same width at the iso plane)
    F(x; s) = (erf((x + b/2) / (sqrt(2) s)) - erf((x - b/2) / (sqrt(2) s))) / 2

``F`` is a unit-area Gaussian integrated over the bixel, so an infinitely wide uniform field has
``sum_n A_n(d)`` on its axis. ``C`` is fixed by the MU calibration of the machine (see
:func:`rtgrid.engines.dose.pencil_beam.calibration_constant`). Component 0 is the primary (narrow:
penumbra), the others are phantom and head scatter (broad: output factors, depth-dose field-size
dependence). This is the separable Gaussian decomposition of Bortfeld et al. (Med Phys 20, 1993,
311) and the finite-size pencil beam of Jelen et al. (Phys Med Biol 50, 2005, 1747) reduced to
analytic Gaussian components.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import erf

SQRT2 = float(np.sqrt(2.0))


@dataclass(frozen=True)
class KernelComponent:
    """One Gaussian component of the pencil-beam kernel (lengths in mm, depths radiological)."""

    name: str
    amplitude: float
    buildup_per_mm: float
    attenuation_per_mm: float
    sigma0_mm: float
    sigma_slope: float
    """Increase of sigma per mm of depth (dimensionless)."""


def component_amplitudes(components: tuple[KernelComponent, ...], depth_mm: np.ndarray) -> np.ndarray:
    """``A_n(d)`` for every component, shape ``(n_components, *depth.shape)``; zero for ``d <= 0``."""
    d = np.maximum(np.asarray(depth_mm, dtype=np.float64), 0.0)
    out = np.empty((len(components),) + d.shape, dtype=np.float64)
    for n, c in enumerate(components):
        out[n] = c.amplitude * -np.expm1(-c.buildup_per_mm * d) * np.exp(-c.attenuation_per_mm * d)
    return out


def component_sigmas_mm(components: tuple[KernelComponent, ...], depth_mm: np.ndarray) -> np.ndarray:
    """``sigma_n(d)`` in physical mm at depth, shape ``(n_components, *depth.shape)``."""
    d = np.maximum(np.asarray(depth_mm, dtype=np.float64), 0.0)
    return np.stack([c.sigma0_mm + c.sigma_slope * d for c in components])


def bixel_overlap(offset_mm: np.ndarray, half_width_mm: float, sigma_mm: np.ndarray) -> np.ndarray:
    """``F``: the fraction of a unit-area 1-D Gaussian of width ``sigma_mm`` centred at ``offset_mm``
    that falls inside ``[-half_width_mm, +half_width_mm]`` (works for any broadcastable shapes)."""
    scale = 1.0 / (SQRT2 * sigma_mm)
    return 0.5 * (erf((offset_mm + half_width_mm) * scale) - erf((offset_mm - half_width_mm) * scale))


def open_field_axis_dose(
    components: tuple[KernelComponent, ...],
    field_mm: float,
    depth_mm: np.ndarray,
    ssd_mm: float,
    sad_mm: float,
) -> np.ndarray:
    """Uncalibrated kernel dose on the axis of a square open field (side ``field_mm`` at the
    isocenter plane) in water at source-surface distance ``ssd_mm``, without the constant ``C``.

    Used to commission the kernel against beam data (the engine itself sums bixels instead).
    """
    d = np.asarray(depth_mm, dtype=np.float64)
    z = ssd_mm + d
    amp = component_amplitudes(components, d)
    sig_iso = component_sigmas_mm(components, d) * sad_mm / z
    per_axis = bixel_overlap(0.0, field_mm / 2.0, sig_iso)
    return (sad_mm / z) ** 2 * np.sum(amp * per_axis**2, axis=0)
