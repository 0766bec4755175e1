"""The AAPM TG-119 C-shape phantom as shipped by pyRadPlan 0.5.0 (``pyRadPlan/data/phantoms/TG119.mat``).

The .mat file (matRad format) holds a 167 x 167 x 129 CT at 3 x 3 x 2.5 mm, first voxel centre at
LPS (-250, -250, -160) mm, identity orientation, head-first supine: ``ct.cubeHU`` (HU) and
``ct.cube`` (relative electron density that matRad derived from it), stored [row = y, column = x,
slice = z]; the structures "Core", "OuterTarget" and "BODY" are 1-based MATLAB (column-major)
linear indices into that cube. rtgrid reads it with scipy.io; pyRadPlan itself is never imported.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io

from rtgrid.engines.errors import EngineError
from rtgrid.engines.imaging.volume import Volume

STRUCTURE_NAMES = ("OuterTarget", "Core", "BODY")


class Tg119Error(EngineError, RuntimeError):
    """The TG-119 file is absent or not the expected matRad layout."""


@dataclass(frozen=True)
class Tg119Case:
    """TG-119 CT and structures on one grid (LPS mm, ``voxels[k, j, i]``).

    Attributes
    ----------
    ct_hu
        CT in Hounsfield units (``float32``), as stored in ``ct.cubeHU``.
    relative_electron_density
        Relative electron density (``float32``) on the same grid, as stored in ``ct.cube``.
    structures
        Boolean masks on the same grid: ``"OuterTarget"`` (the C-shaped PTV), ``"Core"``, ``"BODY"``.
    structure_types
        matRad's type per structure (``"TARGET"`` or ``"OAR"``).
    patient_position
        ``"HFS"``.
    source_path
        The .mat file read.
    """

    ct_hu: Volume
    relative_electron_density: Volume
    structures: dict[str, np.ndarray]
    structure_types: dict[str, str]
    patient_position: str
    source_path: str


def default_tg119_path() -> Path:
    """Where the installed pyRadPlan package keeps TG119.mat.

    Raises
    ------
    Tg119Error
        pyRadPlan is not installed (the message says what to install).
    """
    # find_spec locates the installed package without importing it (pyRadPlan's import is heavy)
    spec = importlib.util.find_spec("pyRadPlan")
    if spec is None or not spec.submodule_search_locations:
        raise Tg119Error(
            "TG-119 phantom not found: install pyRadPlan 0.5.0, which ships it "
            "(pip install pyRadPlan==0.5.0 pydantic==2.13.5 ipyopt==0.12.10), or pass path= to a TG119.mat"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "phantoms" / "TG119.mat"


def _field(struct: object, name: str, path: Path) -> object:
    if not hasattr(struct, name):
        raise Tg119Error(f"{path}: 'ct' has no field '{name}' (not a matRad TG-119 file)")
    return getattr(struct, name)


def load_tg119(path: str | Path | None = None) -> Tg119Case:
    """Read the TG-119 phantom into rtgrid's data model.

    Parameters
    ----------
    path
        A matRad-format ``TG119.mat``; ``None`` takes the one inside the installed pyRadPlan.

    Returns
    -------
    Tg119Case

    Raises
    ------
    Tg119Error
        File missing, unreadable, or without the expected fields and structures.
    """
    path = Path(path) if path is not None else default_tg119_path()
    if not path.exists():
        raise Tg119Error(f"{path}: TG-119 file does not exist")
    try:
        mat = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)
    except (OSError, ValueError, NotImplementedError) as exc:
        raise Tg119Error(f"{path}: cannot read as a MATLAB file ({exc})") from exc
    if "ct" not in mat or "cst" not in mat:
        raise Tg119Error(f"{path}: expected variables 'ct' and 'cst', found {sorted(k for k in mat if not k.startswith('__'))}")
    ct = mat["ct"]
    res = _field(ct, "resolution", path)
    spacing = (float(res.x), float(res.y), float(res.z))
    xs, ys, zs = (np.atleast_1d(np.asarray(_field(ct, a, path), dtype=np.float64)) for a in ("x", "y", "z"))
    hu = np.asarray(_field(ct, "cubeHU", path), dtype=np.float32)
    red = np.asarray(_field(ct, "cube", path), dtype=np.float32)
    if hu.shape != (ys.size, xs.size, zs.size) or red.shape != hu.shape:
        raise Tg119Error(f"{path}: cube shapes {hu.shape}, {red.shape} do not match the axes ({ys.size}, {xs.size}, {zs.size})")
    info = getattr(ct, "dicomInfo", None)
    position = str(getattr(info, "PatientPosition", "HFS")) if info is not None else "HFS"
    orientation = np.asarray(getattr(info, "ImageOrientationPatient", [1, 0, 0, 0, 1, 0]), dtype=np.float64)
    if not np.allclose(orientation, [1, 0, 0, 0, 1, 0]):
        raise Tg119Error(f"{path}: ImageOrientationPatient {orientation.tolist()} is not the identity the reader assumes")
    shape_yxz = hu.shape
    # matRad cube [y, x, z] -> rtgrid voxels[k, j, i] = [z, y, x]
    origin = (xs[0], ys[0], zs[0])
    ct_hu = Volume(np.ascontiguousarray(hu.transpose(2, 0, 1)), origin, spacing)
    red_vol = ct_hu.with_voxels(np.ascontiguousarray(red.transpose(2, 0, 1)))

    structures: dict[str, np.ndarray] = {}
    types: dict[str, str] = {}
    for row in np.atleast_2d(mat["cst"]):
        name = str(row[1])
        indices = np.atleast_1d(np.asarray(row[3].item() if row[3].dtype == object and row[3].size == 1 else row[3]))
        indices = np.asarray(indices, dtype=np.int64).ravel() - 1
        iy, ix, iz = np.unravel_index(indices, shape_yxz, order="F")
        mask = np.zeros(ct_hu.shape, dtype=bool)
        mask[iz, iy, ix] = True
        structures[name] = mask
        types[name] = str(row[2])
    missing = [n for n in STRUCTURE_NAMES if n not in structures]
    if missing:
        raise Tg119Error(f"{path}: structures {missing} are missing (found {sorted(structures)})")
    return Tg119Case(ct_hu, red_vol, structures, types, position, str(path))
