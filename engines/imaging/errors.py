"""Named errors raised while taking DICOM files in and writing image series out.

Every intake error says which file (or files) it concerns and why, so the master can report it
to the hospital verbatim: ``str(error) == f"{file_name}: {reason}"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Self

from rtgrid.engines.errors import EngineError


class IntakeError(EngineError, ValueError):
    """A DICOM upload that cannot be accepted.

    Attributes
    ----------
    file_name : str
        The file concerned; for a series-level error the files concerned joined by ``", "``.
    reason : str
        What is wrong, in words a user can act on.
    file_names : tuple of str
        The files concerned, one per entry (``(file_name,)`` for a single-file error).
    """

    def __init__(self, file_name: str, reason: str, *, file_names: Sequence[str] | None = None) -> None:
        self.file_name = file_name
        self.reason = reason
        self.file_names = tuple(file_names) if file_names is not None else (file_name,)
        super().__init__(f"{file_name}: {reason}")

    @classmethod
    def for_files(cls, file_names: Sequence[str], reason: str) -> Self:
        """A series-level error naming several files (e.g. the two neighbours of a gap)."""
        return cls(", ".join(file_names), reason, file_names=file_names)

    def __reduce__(self):  # keeps the error picklable (Ray ships exceptions between processes)
        return (_rebuild_intake_error, (type(self), self.file_name, self.reason, self.file_names))


def _rebuild_intake_error(
    cls: type[IntakeError], file_name: str, reason: str, file_names: tuple[str, ...]
) -> IntakeError:
    return cls(file_name, reason, file_names=file_names)


class NotDicomError(IntakeError):
    """The bytes are not a DICOM Part 10 file."""


class TruncatedFileError(IntakeError):
    """The file ends before its header or pixel data is complete."""


class UnsupportedModalityError(IntakeError):
    """The modality (or object kind) is not what the caller asked for."""


class MixedSeriesError(IntakeError):
    """Files of more than one series were given as one series."""


class InconsistentGeometryError(IntakeError):
    """Slices do not form one regular grid (orientation, spacing, size, tilt, duplicates)."""


class MissingSliceError(IntakeError):
    """A gap in the slice positions larger than 1.5 times the median slice step."""


class UnsupportedTransferSyntaxError(IntakeError):
    """The pixel data is encoded in a transfer syntax this installation cannot decode."""


class InvalidPixelDataError(IntakeError):
    """The pixel data cannot be decoded or does not match its description."""


class InvalidAttributeError(IntakeError):
    """A DICOM attribute that intake needs is absent, empty or malformed and cannot be repaired."""


class SeriesWriteError(EngineError, ValueError):
    """A volume that cannot be written as a DICOM image series (says which value is wrong)."""
