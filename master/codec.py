"""Byte encodings for what the master keeps in its blob store: volumes, series identity, shard results.

numpy's ``.npz`` without pickle, plus one JSON entry for scalars and strings, so nothing stored
can execute code when read back.
"""

from __future__ import annotations

import dataclasses
import io
import json
from typing import Any, BinaryIO

import numpy as np

from rtgrid.engines.imaging.volume import ImageSeries, SliceRef, Volume

_JSON_KEY = "__json__"
_BYTES_PREFIX = "__bytes__:"


def pack(values: dict[str, Any]) -> bytes:
    """Encode a flat dict of arrays, bytes and JSON-able values."""
    buffer = io.BytesIO()
    pack_into(values, buffer)
    return buffer.getvalue()


def pack_into(values: dict[str, Any], fh: BinaryIO) -> None:
    """:func:`pack`, written to ``fh`` (a CT's volume goes to its blob file without a copy in memory)."""
    arrays: dict[str, np.ndarray] = {}
    plain: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, np.ndarray):
            arrays[key] = value
        elif isinstance(value, (bytes, bytearray)):
            arrays[_BYTES_PREFIX + key] = np.frombuffer(bytes(value), dtype=np.uint8)
        else:
            plain[key] = value
    arrays[_JSON_KEY] = np.frombuffer(json.dumps(plain).encode(), dtype=np.uint8)
    np.savez(fh, **arrays)


def unpack(data: bytes) -> dict[str, Any]:
    """Inverse of :func:`pack`."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        out: dict[str, Any] = json.loads(npz[_JSON_KEY].tobytes())
        for key in npz.files:
            if key == _JSON_KEY:
                continue
            if key.startswith(_BYTES_PREFIX):
                out[key[len(_BYTES_PREFIX):]] = npz[key].tobytes()
            else:
                out[key] = npz[key]
    return out


def write_volume(volume: Volume, fh: BinaryIO) -> None:
    """Encode a volume into ``fh`` (read back by :func:`volume_from_bytes`)."""
    pack_into(
        {
            "voxels": volume.voxels,
            "origin_mm": volume.origin_mm.tolist(),
            "spacing_mm": volume.spacing_mm.tolist(),
            "direction": volume.direction.tolist(),
        },
        fh,
    )


def volume_from_bytes(data: bytes) -> Volume:
    v = unpack(data)
    return Volume(v["voxels"], np.array(v["origin_mm"]), np.array(v["spacing_mm"]), np.array(v["direction"]))


def series_meta_to_bytes(series: ImageSeries) -> bytes:
    """The identity of a series (UIDs per slice, patient, notes) without its voxels, as JSON."""
    meta = {f.name: getattr(series, f.name) for f in dataclasses.fields(series) if f.name != "volume"}
    meta["slices"] = [dataclasses.asdict(s) for s in series.slices]
    meta["notes"] = list(series.notes)
    return json.dumps(meta, sort_keys=True).encode()


def series_from_bytes(meta_data: bytes, volume: Volume) -> ImageSeries:
    meta = json.loads(meta_data)
    meta["slices"] = tuple(
        SliceRef(**{**s, "position_mm": tuple(s["position_mm"])}) for s in meta["slices"]
    )
    meta["notes"] = tuple(meta["notes"])
    return ImageSeries(volume=volume, **meta)
