"""Standard medical orders shipped with rtgrid, fitted to the structures a patient has.

A department's standard order names every structure its protocol knows; a given patient may lack
some (not every head-and-neck patient has a PTV63, or a contoured larynx). The fitted order keeps
what the patient has and drops the rest, so one protocol serves every patient of a site.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import yaml

from .order import MedicalOrderError

ORDERS_DIR = Path(__file__).resolve().parent / "orders"
HEAD_AND_NECK = "head-and-neck-sib"


def standard_order_text(name: str, structures: Collection[str]) -> str:
    """The standard order ``name`` restricted to ``structures`` (YAML text for ``load_order``).

    Parameters
    ----------
    name : str
        A file stem in ``orders/`` (e.g. :data:`HEAD_AND_NECK`).
    structures : Collection[str]
        The structures contoured on the patient.

    Returns
    -------
    str

    Raises
    ------
    MedicalOrderError
        An unknown order, or a patient without the order's highest prescription target.
    """
    path = ORDERS_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in ORDERS_DIR.glob("*.yaml"))
        raise MedicalOrderError(f"no standard order {name!r}; known: {known}")
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    present = set(structures)
    levels = [level for level in raw["prescriptions"] if level["target"] in present]
    if not levels or levels[0] is not raw["prescriptions"][0]:
        raise MedicalOrderError(
            f"standard order {name!r} prescribes to {raw['prescriptions'][0]['target']}, which the patient lacks"
        )
    raw["prescriptions"] = levels
    raw["constraints"] = [c for c in raw.get("constraints", []) if c["structure"] in present]
    return yaml.safe_dump(raw, sort_keys=False)
