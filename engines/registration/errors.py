"""Named errors of image registration; each derives from :class:`EngineError` and ``ValueError``."""

from __future__ import annotations

from rtgrid.engines.errors import EngineError


class RegistrationError(EngineError, ValueError):
    """Two images that cannot be registered as asked; the message names the image and the problem."""


class RegistrationModalityError(RegistrationError):
    """The fixed image is not the planning CT, or the moving image is not an MR or PET series."""


class EmptyImageError(RegistrationError):
    """An image has no voxels, or every voxel holds the same value (nothing to align)."""


class PatientMismatchError(RegistrationError):
    """The two series belong to different patients (their PatientIDs differ)."""


class NoOverlapError(RegistrationError):
    """The two images share too little (or no) space in patient coordinates to be registered."""


class RegistrationFailedError(RegistrationError):
    """The optimizer could not work (e.g. every sample fell outside the moving image)."""
