"""Size limits on every field of every request, checked at the door before any servicer runs.

A string, a bytes field, a map or a repeated field without a bound lets one caller make the
master store, echo and list megabytes (a 1.2 MB idempotency key made every later ``admin jobs``
reply outgrow the gRPC message limit). Every field a request may carry is bounded here: named
fields by :data:`FIELD_LIMITS`, the rest by the defaults. A field over its limit is refused with
INVALID_ARGUMENT naming the field and the limit. Bulk payloads (upload chunks, model weights) are
bounded by the chunk limits where they are received (RESOURCE_EXHAUSTED, as documented), not here.

Echoes of what a caller sent (in error messages and audit rows) are cut with :func:`clip`.
"""

from __future__ import annotations

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from ..errors import InvalidArgument

# Characters (strings) or bytes (bytes fields); ids the master makes are 21 to 24 characters.
ID_CHARS = 64
DEFAULT_STRING_CHARS = 256
DEFAULT_REPEATED_ITEMS = 64
DEFAULT_MAP_ENTRIES = 64
PARAM_KEY_CHARS = 64
PARAM_VALUE_CHARS = 1024

FIELD_LIMITS: dict[str, int] = {
    "CreateCaseRequest.label": 256,
    "StartUploadRequest.file_name": 255,
    "StartUploadRequest.sha256": 64,
    "SubmitJobRequest.kind": 32,
    "SubmitJobRequest.idempotency_key": 128,
    "SetDeviceRequest.model_id": 128,
    "ModelPackageChunk.sha256": 64,
    "ModelPackageChunk.card_json": 1 << 20,
    "FetchModelRequest.sha256": 64,
    "AddHospitalRequest.name": 64,
    "RevokeHospitalRequest.name": 64,
    "ListAuditRequest.principal": 256,
    "ListAuditRequest.action": 32,
    "ListAuditRequest.page_token": 256,
    "ListJobsRequest.page_token": 256,
    "ListJobsRequest.states": 16,
    "RegisterRequest.hostname": 255,
    "RegisterRequest.engine_versions": 64,
    "SubmitJobRequest.params": 32,
    "ReviewVersionRequest.comment": 2000,
    "ReviewVersionRequest.action": 32,
    "VersionChunk.sha256": 64,
    "ShareCaseRequest.grant": 32,
}
# Job parameters by name: an order is YAML text, ``assist`` a drawn RTSTRUCT in base64 JSON.
PARAM_VALUE_LIMITS: dict[str, int] = {"order": 64 << 10, "assist": 1 << 20}
# Fields limited elsewhere, with RESOURCE_EXHAUSTED naming max_chunk_bytes.
_PAYLOADS = frozenset({"UploadChunk.data", "ModelPackageChunk.data", "VersionChunk.data"})
# Strings that name one object the master made (or the caller names: hospital, device, agent).
_ID_FIELDS = frozenset({"case_id", "job_id", "upload_id", "artifact_id", "agent_id", "device_id", "hospital"})


def clip(text: object, limit: int = 200) -> str:
    """``text`` as a string of at most about ``limit`` characters, saying how long it was."""
    text = str(text)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...({len(text)} characters)"


def _limit(message_name: str, field: FieldDescriptor) -> int:
    name = f"{message_name}.{field.name}"
    if name in FIELD_LIMITS:
        return FIELD_LIMITS[name]
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        return DEFAULT_MAP_ENTRIES
    if field.is_repeated:
        return DEFAULT_REPEATED_ITEMS
    return ID_CHARS if field.name in _ID_FIELDS else DEFAULT_STRING_CHARS


def _too_long(what: str, size: int, limit: int, unit: str) -> InvalidArgument:
    return InvalidArgument(f"field {what} is {size} {unit}; the limit is {limit} {unit}")


def check_request(message: Message, path: str = "") -> None:
    """Refuse a request with any field over its size limit.

    Parameters
    ----------
    message : Message
        A request (or one message of a request stream), checked with its nested messages.
    path : str
        Prefix of the field names in the error (for nested messages).

    Raises
    ------
    InvalidArgument
        Naming the first field over its limit, its size and the limit.
    """
    descriptor = message.DESCRIPTOR
    for field, value in message.ListFields():
        full = f"{descriptor.name}.{field.name}"
        what = f"{path}{field.name}"
        if full in _PAYLOADS:
            continue
        limit = _limit(descriptor.name, field)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            if len(value) > limit:
                raise _too_long(what, len(value), limit, "entries")
            for key, item in value.items():
                _check_entry(what, key, item, full)
        elif field.is_repeated:
            if len(value) > limit:
                raise _too_long(what, len(value), limit, "items")
            for i, item in enumerate(value):
                if isinstance(item, Message):
                    check_request(item, f"{what}[{i}].")
                elif isinstance(item, (str, bytes)) and len(item) > DEFAULT_STRING_CHARS:
                    raise _too_long(f"{what}[{i}]", len(item), DEFAULT_STRING_CHARS, "characters")
        elif isinstance(value, Message):
            check_request(value, f"{what}.")
        elif isinstance(value, (str, bytes)) and len(value) > limit:
            raise _too_long(what, len(value), limit, "characters" if isinstance(value, str) else "bytes")
        _refuse_nul(what, value)


def _refuse_nul(what: str, value: object) -> None:
    """Refuse text holding U+0000: PostgreSQL cannot store it (the call would fail as INTERNAL
    there and succeed on SQLite), and no name, label, order or id has a use for it."""
    if isinstance(value, str):
        texts = [value]
    elif hasattr(value, "items"):  # a map: its keys and its text values
        texts = [t for pair in value.items() for t in pair if isinstance(t, str)]
    elif isinstance(value, (bytes, Message)) or not hasattr(value, "__iter__"):  # numbers, bytes
        texts = []
    else:  # a repeated field; nested messages were checked on their own
        texts = [t for t in value if isinstance(t, str)]
    if any("\x00" in text for text in texts):
        raise InvalidArgument(f"field {what} contains a NUL character (U+0000), which no text field may hold")


def _check_entry(what: str, key: object, value: object, full: str) -> None:
    key_text = str(key)
    if len(key_text) > PARAM_KEY_CHARS:
        raise _too_long(f"{what} key {clip(key_text, 40)!r}", len(key_text), PARAM_KEY_CHARS, "characters")
    if not isinstance(value, str):
        return
    limit = PARAM_VALUE_LIMITS.get(key_text, PARAM_VALUE_CHARS) if full == "SubmitJobRequest.params" \
        else PARAM_VALUE_CHARS
    if len(value) > limit:
        raise _too_long(f"{what}[{key_text!r}]", len(value), limit, "characters")
