"""The one base of every engine error.

An engine raises an :class:`EngineError` when its input cannot be worked with (a malformed file, a
field out of range, data that do not fit together); the message names what is wrong. Each engine
keeps its own named subclass (``ConversionError``, ``MachineModelError``, ...), which still derives
from ``ValueError`` (or ``RuntimeError``) as before, so callers that catch those keep working.

The master maps an ``EngineError`` in one place: an RPC answers INVALID_ARGUMENT with the message
(``rtgrid.master.services.common``); a shard that raises one fails with the message, naming its type.
"""

from __future__ import annotations


class EngineError(Exception):
    """Input an engine cannot work with; the message says what is wrong and where."""


__all__ = ["EngineError"]
