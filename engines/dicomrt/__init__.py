"""DICOM RT objects: planar contours and RT Structure Sets (write from masks, read back)."""

from rtgrid.engines.dicomrt.contours import Contour, ContourGeometryError, contours_to_mask, mask_to_contours
from rtgrid.engines.dicomrt.rtstruct import (
    RoiInfo,
    RtStructError,
    StructureSpec,
    rasterize_contours,
    read_rtstruct,
    read_rtstruct_rois,
    rtstruct_contours,
    write_rtstruct,
)

__all__ = [
    "Contour",
    "ContourGeometryError",
    "RoiInfo",
    "RtStructError",
    "StructureSpec",
    "contours_to_mask",
    "mask_to_contours",
    "rasterize_contours",
    "read_rtstruct",
    "read_rtstruct_rois",
    "rtstruct_contours",
    "write_rtstruct",
]
