"""Segmentation agreement metrics in physical units: DSC, JI, ASD, HD and HD95 (mm).

Conventions (those of the auto-segmentation literature and MONAI):

- Surface voxels of a mask are its voxels with at least one face neighbour (6-connectivity)
  outside it; outside the array counts as outside.
- Surface distances are Euclidean distances, in mm using the voxel spacing, from each surface
  voxel centre of one mask to the nearest surface voxel centre of the other.
- ASD is the symmetric mean: the mean over both directed distance sets together.
- HD is the largest surface distance in either direction; HD95 is the larger of the two directed
  95th percentiles.
- Both masks empty: DSC = JI = 1 and distances 0. One empty: DSC = JI = 0 and distances
  infinite (``null`` in JSON).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class StructureMetrics:
    """Agreement of one structure between a reference and a test segmentation.

    Attributes
    ----------
    name : str
        Structure name.
    dsc : float
        Dice similarity coefficient, 2|A∩B| / (|A| + |B|).
    ji : float
        Jaccard index, |A∩B| / |A∪B|.
    asd_mm : float
        Symmetric average surface distance (mm).
    hd_mm : float
        Hausdorff distance (mm).
    hd95_mm : float
        95th-percentile Hausdorff distance (mm).
    reference_volume_ml, test_volume_ml : float
        Volumes (cm³).
    """

    name: str
    dsc: float
    ji: float
    asd_mm: float
    hd_mm: float
    hd95_mm: float
    reference_volume_ml: float
    test_volume_ml: float


@dataclass(frozen=True)
class CaseMetrics:
    """All structures of one case, with their means (over structures present in the reference)."""

    case_id: str
    structures: tuple[StructureMetrics, ...]

    def mean(self, field: str) -> float:
        """Mean of a metric field over structures whose reference is not empty."""
        values = [getattr(s, field) for s in self.structures if s.reference_volume_ml > 0]
        return float(np.mean(values)) if values else math.nan

    def to_dict(self) -> dict:
        """Plain data; infinite and NaN values become ``None``."""
        def clean(value):
            if isinstance(value, float) and not math.isfinite(value):
                return None
            return value

        structures = [{k: clean(v) for k, v in asdict(s).items()} for s in self.structures]
        means = {f: clean(self.mean(f)) for f in ("dsc", "ji", "asd_mm", "hd_mm", "hd95_mm")}
        return {"case_id": self.case_id, "structures": structures, "mean": means}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)


def _spacing_zyx(spacing_mm: Sequence[float], ndim: int) -> np.ndarray:
    """``(di, dj[, dk])`` as array-axis order (``[dk,] dj, di``)."""
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    if spacing.shape != (ndim,) or np.any(spacing <= 0):
        raise ValueError(f"spacing_mm must be {ndim} positive values (di, dj[, dk]), got {list(spacing_mm)}")
    return spacing[::-1]


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a face neighbour outside it (outside the array counts as outside)."""
    mask = np.asarray(mask, dtype=bool)
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def directed_surface_distances(from_mask: np.ndarray, to_mask: np.ndarray, spacing_mm: Sequence[float]) -> np.ndarray:
    """Distances (mm) from each surface voxel of ``from_mask`` to the surface of ``to_mask``.

    Both masks must be non-empty and of the same shape; ``spacing_mm`` is ``(di, dj[, dk])``.
    """
    spacing = _spacing_zyx(spacing_mm, from_mask.ndim)
    union = np.asarray(from_mask, bool) | np.asarray(to_mask, bool)
    # The nearest surface voxel of to_mask lies inside the union's bounding box: crop for speed.
    coordinates = np.nonzero(union)
    box = tuple(slice(int(c.min()), int(c.max()) + 1) for c in coordinates)
    from_surface = surface_voxels(np.asarray(from_mask, bool)[box])
    to_surface = surface_voxels(np.asarray(to_mask, bool)[box])
    distance_to_surface = ndimage.distance_transform_edt(~to_surface, sampling=spacing)
    return distance_to_surface[from_surface]


def compare_masks(reference: np.ndarray, test: np.ndarray, spacing_mm: Sequence[float], name: str = "") -> StructureMetrics:
    """Agreement of two binary masks on the same grid.

    Parameters
    ----------
    reference, test : np.ndarray
        Boolean (or 0/1) masks, 2-D ``(ny, nx)`` or 3-D ``(nz, ny, nx)``, same shape.
    spacing_mm : sequence of float
        ``(di, dj)`` or ``(di, dj, dk)`` in mm (column, row, slice).
    name : str
        Structure name to carry into the result.

    Returns
    -------
    StructureMetrics
    """
    reference = np.asarray(reference, dtype=bool)
    test = np.asarray(test, dtype=bool)
    if reference.shape != test.shape:
        raise ValueError(f"structure {name!r}: reference shape {reference.shape} differs from test shape {test.shape}")
    spacing = _spacing_zyx(spacing_mm, reference.ndim)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    n_ref, n_test = int(reference.sum()), int(test.sum())
    n_both = int(np.count_nonzero(reference & test))
    if n_ref == 0 and n_test == 0:
        return StructureMetrics(name, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    dsc = 2.0 * n_both / (n_ref + n_test)
    ji = n_both / (n_ref + n_test - n_both)
    if n_ref == 0 or n_test == 0:
        return StructureMetrics(name, dsc, ji, math.inf, math.inf, math.inf, n_ref * voxel_ml, n_test * voxel_ml)
    d_ref = directed_surface_distances(reference, test, spacing_mm)
    d_test = directed_surface_distances(test, reference, spacing_mm)
    return StructureMetrics(
        name=name,
        dsc=dsc,
        ji=ji,
        asd_mm=float((d_ref.sum() + d_test.sum()) / (d_ref.size + d_test.size)),
        hd_mm=float(max(d_ref.max(), d_test.max())),
        hd95_mm=float(max(np.percentile(d_ref, 95), np.percentile(d_test, 95))),
        reference_volume_ml=n_ref * voxel_ml,
        test_volume_ml=n_test * voxel_ml,
    )


def compare_label_maps(
    reference: np.ndarray,
    test: np.ndarray,
    spacing_mm: Sequence[float],
    labels: Mapping[int, str],
    case_id: str = "",
) -> CaseMetrics:
    """Per-structure agreement of two label maps on the same grid.

    Parameters
    ----------
    reference, test : np.ndarray
        Integer label maps of the same shape.
    spacing_mm : sequence of float
        ``(di, dj[, dk])`` in mm.
    labels : mapping of int to str
        Label values to compare and their names (background excluded by the caller).
    case_id : str
        Identifier carried into the result.

    Returns
    -------
    CaseMetrics
    """
    if reference.shape != test.shape:
        raise ValueError(f"case {case_id!r}: reference shape {reference.shape} differs from test shape {test.shape}")
    return CaseMetrics(
        case_id=case_id,
        structures=tuple(compare_masks(reference == value, test == value, spacing_mm, name) for value, name in labels.items()),
    )
