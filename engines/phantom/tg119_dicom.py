"""The AAPM TG-119 C-shape phantom as a planning system receives it: a CT series, an RTSTRUCT drawn
by hand on it, and the TG-119 medical order.

The CT is pyRadPlan's ``TG119.mat`` (see :mod:`rtgrid.engines.phantom.tg119`) written slice by slice
in HU; the structures are its masks on the same grid: ``OuterTarget`` (the C-shaped target) as PTV,
``Core`` as AVOIDANCE, ``BODY`` as EXTERNAL, all MANUAL. The order is
``engines/optimization/example_order.yaml`` (50 Gy in 25 fractions, TG-119 goals).
"""

from __future__ import annotations

from pathlib import Path

from rtgrid.engines.dicomrt.rtstruct import StructureSpec, write_rtstruct
from rtgrid.engines.imaging.ct_writer import write_ct_series
from rtgrid.engines.imaging.intake import load_series_dir

from .tg119 import load_tg119

TG119_ORDER_PATH = Path(__file__).resolve().parents[1] / "optimization" / "example_order.yaml"
TG119_PATIENT_ID = "RTGRID-TG119"

# name -> (RT ROI Interpreted Type, display colour)
TG119_ROIS: dict[str, tuple[str, tuple[int, int, int]]] = {
    "OuterTarget": ("PTV", (255, 0, 0)),
    "Core": ("AVOIDANCE", (255, 255, 0)),
    "BODY": ("EXTERNAL", (0, 255, 0)),
}


def write_tg119_case(out_dir: Path, mat_path: str | Path | None = None) -> tuple[Path, Path, str]:
    """Write the TG-119 phantom as DICOM: ``ct/CT_0000.dcm ...`` and ``RS.tg119.dcm`` in ``out_dir``.

    Parameters
    ----------
    out_dir : Path
        Folder to write into (created if missing).
    mat_path : str or Path, optional
        A matRad-format ``TG119.mat``; ``None`` takes the one inside the installed pyRadPlan.

    Returns
    -------
    tuple of (Path, Path, str)
        The CT folder, the RTSTRUCT file (referencing that CT series) and the TG-119 medical order
        (YAML text).

    Raises
    ------
    Tg119Error
        The TG-119 file is missing or not in the expected layout.
    SeriesWriteError
        A CT voxel does not fit a 16-bit HU value.
    """
    case = load_tg119(mat_path)
    out_dir = Path(out_dir)
    ct_dir = out_dir / "ct"
    write_ct_series(
        case.ct_hu,
        ct_dir,
        patient_id=TG119_PATIENT_ID,
        patient_name="TG119^CShape",
        study_description="AAPM TG-119 C-shape phantom",
        series_description="TG-119 CT (pyRadPlan TG119.mat)",
    )
    # Read back, so the RTSTRUCT references the written files' UIDs and geometry.
    series = load_series_dir(ct_dir)
    specs = [
        StructureSpec(name, case.structures[name], roi_type, color, "MANUAL", "TG-119 phantom structure")
        for name, (roi_type, color) in TG119_ROIS.items()
    ]
    rtstruct_path = out_dir / "RS.tg119.dcm"
    write_rtstruct(series, specs, label="TG119", description="TG-119 C-shape structures").save_as(
        rtstruct_path, enforce_file_format=True
    )
    return ct_dir, rtstruct_path, TG119_ORDER_PATH.read_text()
