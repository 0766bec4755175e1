"""Registration of MR and PET series to the planning CT (SimpleITK), and what follows from it.

``register_rigid`` (Mattes mutual information, Euler 3-D, multi-resolution) and the optional
``register_deformable`` (B-spline after the rigid result) return result objects whose matrices are
in DICOM patient coordinates (LPS, mm) and map MOVING -> FIXED. ``map_structures_to_fixed`` carries
contours drawn on the moving image onto the CT; ``fused_overlay_png`` draws the check picture.
"""

from rtgrid.engines.registration.contours import map_points_to_fixed, map_structures_to_fixed
from rtgrid.engines.registration.deformable import (
    BSplineGrid,
    DeformableResult,
    DeformableSettings,
    DisplacementField,
    register_deformable,
    resample_deformed,
)
from rtgrid.engines.registration.errors import (
    EmptyImageError,
    NoOverlapError,
    PatientMismatchError,
    RegistrationError,
    RegistrationFailedError,
    RegistrationModalityError,
)
from rtgrid.engines.registration.overlay import fused_overlay_png
from rtgrid.engines.registration.rigid import RigidResult, RigidSettings, register_rigid, resample_to_fixed

__all__ = [
    "BSplineGrid",
    "DeformableResult",
    "DeformableSettings",
    "DisplacementField",
    "EmptyImageError",
    "NoOverlapError",
    "PatientMismatchError",
    "RegistrationError",
    "RegistrationFailedError",
    "RegistrationModalityError",
    "RigidResult",
    "RigidSettings",
    "fused_overlay_png",
    "map_points_to_fixed",
    "map_structures_to_fixed",
    "register_deformable",
    "register_rigid",
    "resample_deformed",
    "resample_to_fixed",
]
