"""How executors hand back files: the result convention of :mod:`rtgrid.protos.grid_contract`."""

from __future__ import annotations

import io
from typing import Any

import pydicom

from rtgrid.protos.grid_contract import Artifact, publishing


def artifact(*files: tuple[str, str, str, bytes]) -> dict[str, Any]:
    """A shard result publishing ``(name, kind, modality, data)`` files as job artifacts."""
    return publishing(*(Artifact(*file) for file in files))


def dataset_bytes(ds: pydicom.Dataset) -> bytes:
    """A DICOM dataset as Part 10 file bytes."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
