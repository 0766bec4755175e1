"""The device registry: treatment machines per hospital, their status and queues, and the choice
of devices by congestion (the patent's claims 8, 9 and 13)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from rtgrid.engines.conversion.device import DeviceModelError, list_devices, load_device

from .errors import FailedPrecondition, InvalidArgument, NotFound
from .ids import now_ms
from .store.base import Store
from .store.records import AVAILABLE, BUSY, DOWN, DeviceRecord

STATUSES = (AVAILABLE, BUSY, DOWN)
DEFAULT_HOSPITAL = "default"
# A device id is what every RTPLAN carries as Treatment Machine Name (DICOM SH: 16 characters).
MAX_DEVICE_ID = 16
# Names of the catalog's models when the registry seeds itself, as a department would name them.
SEED_NAMES = {
    "varian-truebeam-m120-6x": "TB-M120",
    "varian-truebeam-hd120-6x": "TB-HD120",
    "elekta-versahd-agility-6mv": "VERSA-AGILITY",
    "elekta-synergy-mlci2-6mv": "SYNERGY-MLCI2",
}


@dataclass(frozen=True)
class CatalogEntry:
    model_id: str
    version: str
    manufacturer: str
    model: str
    mlc: str
    leaf_pairs: int
    min_leaf_width_mm: float
    interdigitation: bool
    max_field_mm: tuple[float, float]
    content_hash: str


@functools.lru_cache(maxsize=1)
def catalog() -> tuple[CatalogEntry, ...]:
    """Every device model shipped as a versioned data file (read once: parsing them all takes a
    few hundred ms, which must not stall the server's event loop on every ListDevices)."""
    entries = []
    for model_id in list_devices():
        d = load_device(model_id)
        m = d.machine
        entries.append(CatalogEntry(
            model_id, m.version, d.manufacturer, d.model, d.mlc_model, m.n_pairs, float(min(m.leaf_widths_mm)),
            bool(m.interdigitation), tuple(map(float, m.max_field_mm)), m.content_hash,
        ))
    return tuple(entries)


def seed_from_catalog(store: Store) -> int:
    """An empty registry gets one device per catalog model (the embedded default); returns how many."""
    if store.list_devices():
        return 0
    models = list_devices()
    for model_id in models:
        name = SEED_NAMES.get(model_id, model_id[:MAX_DEVICE_ID])
        store.upsert_device(DeviceRecord(name, DEFAULT_HOSPITAL, model_id, AVAILABLE, 0, now_ms()))
    return len(models)


def set_device(store: Store, device_id: str, *, hospital: str = "", model_id: str = "", status: str = "",
               queue_length: int = -1) -> DeviceRecord:
    """Add a device (``hospital`` and ``model_id`` needed) or change its status / queue length."""
    if status and status not in STATUSES:
        raise InvalidArgument(f"device status {status!r} is not one of {', '.join(STATUSES)}")
    if not device_id or len(device_id) > MAX_DEVICE_ID or "\\" in device_id:
        raise InvalidArgument(f"device id {device_id!r}: 1 to {MAX_DEVICE_ID} characters, no backslash "
                              "(it becomes the RTPLAN's Treatment Machine Name)")
    device = store.get_device(device_id)
    if device is None:
        if not (hospital and model_id):
            raise NotFound(f"no device {device_id!r}; to add it give its hospital and model")
        try:
            load_device(model_id)
        except DeviceModelError as exc:
            raise InvalidArgument(f"device model {model_id!r}: {exc}; catalog: {', '.join(list_devices())}") from None
        device = DeviceRecord(device_id, hospital, model_id, AVAILABLE, 0, now_ms())
    elif model_id and model_id != device.model_id:
        raise FailedPrecondition(f"device {device_id} runs {device.model_id}; a new model is a new device")
    if status:
        device.status = status
    if queue_length >= 0:
        device.queue_length = queue_length
    device.updated_ms = now_ms()
    store.upsert_device(device)
    return device


RULES = ("congestion", "shortest_queue", "prefer:ID,ID,...")


def congestion_order(devices: list[DeviceRecord], rule: str = "congestion") -> list[DeviceRecord]:
    """Usable devices (not down), best first, by a rule.

    ``congestion`` (default): idle first, then busy; within each, the shortest queue.
    ``shortest_queue``: the shortest queue, idle or busy. ``prefer:A,B``: the named devices first,
    in that order, then the rest by congestion.

    Raises
    ------
    InvalidArgument
        For an unknown rule.
    """
    rank = {AVAILABLE: 0, BUSY: 1}
    usable = [d for d in devices if d.status != DOWN]
    if rule == "congestion":
        return sorted(usable, key=lambda d: (rank[d.status], d.queue_length, d.device_id))
    if rule == "shortest_queue":
        return sorted(usable, key=lambda d: (d.queue_length, rank[d.status], d.device_id))
    if rule.startswith("prefer:"):
        preferred = [p.strip() for p in rule.removeprefix("prefer:").split(",") if p.strip()]
        first = {name: n for n, name in enumerate(preferred)}
        return sorted(usable, key=lambda d: (first.get(d.device_id, len(first)), rank[d.status], d.queue_length,
                                             d.device_id))
    raise InvalidArgument(f"device_rule={rule!r} is not one of {', '.join(RULES)}")


def devices_of(store: Store, hospital: str) -> list[DeviceRecord]:
    """The devices a hospital's jobs may use: its own and the grid's shared ones
    (:data:`DEFAULT_HOSPITAL`), never another hospital's."""
    return [d for d in store.list_devices() if d.hospital in (hospital, DEFAULT_HOSPITAL)]


def resolve_devices(store: Store, spec: str, hospital: str, rule: str = "congestion") -> list[str]:
    """Device ids from a job's ``devices`` parameter: ``ID,ID,...``, ``auto`` or ``auto:N``
    (``auto`` picks by ``rule``, see :func:`congestion_order`), among :func:`devices_of` ``hospital``.

    Raises
    ------
    InvalidArgument
        Unknown ids (another hospital's count as unknown), a malformed spec or rule, or fewer
        usable devices than asked for.
    """
    spec = spec.strip()
    mine = devices_of(store, hospital)
    if spec == "auto" or spec.startswith("auto:"):
        try:
            count = int(spec.partition(":")[2] or 1)
        except ValueError:
            raise InvalidArgument(f"devices={spec!r}: auto or auto:N with N a number") from None
        ranked = congestion_order(mine, rule)
        if not 1 <= count <= max(len(ranked), 1) or len(ranked) < count:
            raise InvalidArgument(f"devices={spec!r}: {len(ranked)} devices are usable (not down)")
        return [d.device_id for d in ranked[:count]]
    ids = [s.strip() for s in spec.split(",") if s.strip()]
    if not ids or len(set(ids)) != len(ids):
        raise InvalidArgument(f"devices={spec!r}: give distinct device ids, or auto")
    known = {d.device_id for d in mine}
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise InvalidArgument(f"unknown device(s) {', '.join(unknown)}; registered: {', '.join(sorted(known))}")
    return ids


def reroute(store: Store, device_id: str, taken: set[str], hospital: str, rule: str = "congestion") -> str | None:
    """Another usable device of ``hospital`` (:func:`devices_of`) for a conversion planned on
    ``device_id`` (now down): the best one by ``rule`` that the job does not already use; ``None``
    when there is none."""
    for candidate in congestion_order(devices_of(store, hospital), rule):
        if candidate.device_id != device_id and candidate.device_id not in taken:
            return candidate.device_id
    return None
