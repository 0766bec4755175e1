"""What a physician adds to the phantom's CT before planning: drawn targets and organs at risk
(an RTSTRUCT marked MANUAL, referencing the written CT series) and a medical order."""

from __future__ import annotations

from pathlib import Path

from rtgrid.engines.dicomrt.rtstruct import StructureSpec, write_rtstruct
from rtgrid.engines.imaging.intake import load_series_dir

from .digital_patient import Phantom, PhantomCase

# The structures drawn by hand on the phantom (the classical auto-contours supply BODY and lungs).
MANUAL_ROIS: dict[str, tuple[str, tuple[int, int, int]]] = {
    "GTV": ("GTV", (255, 0, 0)),
    "PTV": ("PTV", (255, 128, 0)),
    "Heart": ("ORGAN", (255, 0, 255)),
    "SpinalCord": ("AVOIDANCE", (255, 255, 0)),
}

# A lung SBRT-like conventional order for the phantom's right-lung tumour: 60 Gy in 30 fractions,
# with the QUANTEC-style limits a physicist would write for cord, heart and lungs.
PHANTOM_ORDER = """\
name: Phantom right-lung tumour, 60 Gy / 30 fx
prescription: {target: PTV, dose_gy: 60, fractions: 30, normalization_volume_pct: 95}
constraints:
  - {structure: PTV, type: min_dvh, dose_gy: 57, volume_pct: 98, priority: 2}
  - {structure: PTV, type: max_dose, dose_gy: 66, priority: 2}
  - {structure: SpinalCord, type: max_dose, dose_gy: 45, priority: 1}
  - {structure: Heart, type: max_mean_dose, dose_gy: 20, priority: 3}
  - {structure: Lung_R, type: max_dvh, dose_gy: 20, volume_pct: 30, priority: 3}
  - {structure: Lung_L, type: max_dvh, dose_gy: 8, volume_pct: 25, priority: 3}
  - {structure: BODY, type: max_dose, dose_gy: 69, priority: 4}
"""


def write_plan_inputs(case: PhantomCase, phantom: Phantom, out_dir: Path) -> tuple[Path, Path]:
    """Write ``RS.manual.dcm`` (on ``case``'s CT series) and ``order.yaml`` into ``out_dir``.

    Returns
    -------
    tuple of Path
        The RTSTRUCT file and the order file.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    series = load_series_dir(case.ct_dir)
    specs = [
        StructureSpec(name, phantom.labels[name], roi_type, color, "MANUAL", "drawn on the phantom")
        for name, (roi_type, color) in MANUAL_ROIS.items()
    ]
    rtstruct_path = out_dir / "RS.manual.dcm"
    write_rtstruct(series, specs, label="MANUAL", description="targets and organs at risk").save_as(
        rtstruct_path, enforce_file_format=True
    )
    order_path = out_dir / "order.yaml"
    order_path.write_text(PHANTOM_ORDER)
    return rtstruct_path, order_path
