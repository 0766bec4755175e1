"""The synthetic MR/PET pairs from a real CT, and their registrations, computed once per session."""

from __future__ import annotations

import time

import numpy as np
import pytest

from rtgrid.engines.registration.deformable import DeformableSettings, register_deformable
from rtgrid.engines.registration.rigid import RigidSettings, register_rigid
from tests.engines.registration import synth

# Bounded and quick on two shared cores: 10% of the voxels sampled, two threads.
FAST_RIGID = RigidSettings(sampling_fraction=0.1, threads=2, time_budget_s=90.0)
FAST_DEFORMABLE = DeformableSettings(
    sampling_fraction=0.05, shrink_factors=(2,), smoothing_sigmas_mm=(2.0,), max_iterations=10, threads=2, time_budget_s=60.0
)


@pytest.fixture(scope="session")
def patient():
    return synth.openkbp_patient()


@pytest.fixture(scope="session")
def ct(patient):
    return synth.planning_ct(patient)


@pytest.fixture(scope="session")
def hot_spots_mm(patient) -> list[np.ndarray]:
    """PET hot spots at the centres of the PTV70 and the left parotid (CT frame, mm)."""
    volume = patient.volume
    return [volume.index_to_lps(np.array(np.nonzero(patient.masks[n]))[::-1].mean(axis=1)) for n in ("PTV70", "Parotid_L")]


@pytest.fixture(scope="session")
def mr_pair(ct):
    return synth.synthetic_mr(ct)


@pytest.fixture(scope="session")
def pet_pair(ct, hot_spots_mm):
    return synth.synthetic_pet(ct, hot_spots_mm)


@pytest.fixture(scope="session")
def mr_rigid(ct, mr_pair):
    return _timed(lambda: register_rigid(ct, mr_pair[0], FAST_RIGID))


@pytest.fixture(scope="session")
def pet_rigid(ct, pet_pair):
    return _timed(lambda: register_rigid(ct, pet_pair[0], FAST_RIGID))


@pytest.fixture(scope="session")
def mr_deformable(ct, mr_pair, mr_rigid):
    return _timed(lambda: register_deformable(ct, mr_pair[0], mr_rigid[0], FAST_DEFORMABLE))


def _timed(run):
    started = time.monotonic()
    result = run()
    return result, time.monotonic() - started
