"""How executors hand back files: the result convention of ``rtgrid.master.jobs.base``."""

from __future__ import annotations

import io
from typing import Any

import pydicom


def artifact(*files: tuple[str, str, str, bytes]) -> dict[str, Any]:
    """A shard result publishing ``(name, kind, modality, data)`` files as job artifacts."""
    result: dict[str, Any] = {"artifacts": [{"name": n, "kind": k, "modality": m} for n, k, m, _ in files]}
    result.update({f"file:{n}": data for n, _, _, data in files})
    return result


def dataset_bytes(ds: pydicom.Dataset) -> bytes:
    """A DICOM dataset as Part 10 file bytes."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
