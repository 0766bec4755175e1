"""Proto enum values <-> the short lower-case names people type and read.

One rule for every enum of the protos: the value ``JOB_STATE_SUCCEEDED`` of ``JobState`` is
``succeeded``; the enum's name in upper snake case is the prefix dropped. ``*_UNSPECIFIED`` is
never a choice.
"""

from __future__ import annotations

import re

from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper


def _prefix(enum: EnumTypeWrapper) -> str:
    """``JobState`` -> ``JOB_STATE_``."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", enum.DESCRIPTOR.name).upper() + "_"


def enum_name(enum: EnumTypeWrapper, value: int) -> str:
    """The short name of ``value``: ``enum_name(JobState, JOB_STATE_SUCCEEDED)`` is ``succeeded``.

    A value this client's protos do not know (a newer master) reads ``unknown(N)`` instead of failing.
    """
    try:
        full = enum.Name(value)
    except ValueError:
        return f"unknown({value})"
    return full.removeprefix(_prefix(enum)).lower()


def enum_choices(enum: EnumTypeWrapper) -> list[str]:
    """Every short name one may ask for (``*_UNSPECIFIED`` left out), in the proto's order."""
    return [enum_name(enum, v) for v in enum.values() if v != 0]


def enum_value(enum: EnumTypeWrapper, name: str) -> int:
    """The value of a short name: ``enum_value(DeviceStatus, "down")`` is ``DEVICE_STATUS_DOWN``.

    Raises
    ------
    ValueError
        For a name that is not one of :func:`enum_choices`, naming the choices.
    """
    full = _prefix(enum) + name.strip().upper()
    if name.strip() and full in enum.keys() and enum.Value(full) != 0:
        return enum.Value(full)
    raise ValueError(f"{name!r} is not a {enum.DESCRIPTOR.name}: one of {', '.join(enum_choices(enum))}")
