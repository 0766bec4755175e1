"""Fixtures for the imaging tests: real files, small written series, and a way to edit files."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest

from rtgrid.engines.imaging.ct_writer import write_ct_series
from rtgrid.engines.imaging.volume import Volume

Files = list[tuple[str, bytes]]


def _read_folder(folder: Path, prefix: str = "") -> Files:
    return [(prefix + p.name, p.read_bytes()) for p in sorted(folder.iterdir()) if p.is_file()]


@pytest.fixture(scope="session")
def real_ct_files(totalseg_dir: Path) -> Files:
    """The 20 real JPEG 2000 lossless slices with empty dataset UIDs."""
    return _read_folder(totalseg_dir / "ct_dicom")


@pytest.fixture(scope="session")
def small_volume() -> Volume:
    """A 6-slice 24 x 20 CT with a rotated in-plane orientation and an off-grid origin."""
    rng = np.random.default_rng(7)
    voxels = rng.integers(-1024, 1500, size=(6, 24, 20)).astype(np.int16)
    angle = np.radians(12.0)
    direction = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    return Volume(voxels, origin_mm=[-31.25, 12.5, -102.0], spacing_mm=[0.8, 0.9, 2.5], direction=direction)


@pytest.fixture(scope="session")
def small_series(small_volume: Volume, tmp_path_factory: pytest.TempPathFactory) -> Files:
    """``small_volume`` written by our CT writer, as (file name, bytes)."""
    folder = tmp_path_factory.mktemp("small_series")
    write_ct_series(small_volume, folder, patient_id="P-SMALL", patient_name="Small^Series")
    return _read_folder(folder, prefix="a_")


@pytest.fixture(scope="session")
def other_small_series(small_volume: Volume, tmp_path_factory: pytest.TempPathFactory) -> Files:
    """The same volume written again: a second series with fresh UIDs."""
    folder = tmp_path_factory.mktemp("other_small_series")
    write_ct_series(small_volume, folder, patient_id="P-SMALL", patient_name="Small^Series")
    return _read_folder(folder, prefix="b_")


def _edit(data: bytes, change: Callable[[pydicom.Dataset], None]) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    change(ds)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.fixture(scope="session")
def edit() -> Callable[[bytes, Callable[[pydicom.Dataset], None]], bytes]:
    """``edit(data, change)``: the file re-encoded after ``change(dataset)``."""
    return _edit
