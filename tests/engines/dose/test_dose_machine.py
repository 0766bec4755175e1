"""The machine data file and its loader."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from rtgrid.engines.dose.machine import STANDARD_MACHINE_ID, MachineModelError, list_machines, load_machine


def test_standard_machine_loads_with_millennium_mlc_geometry() -> None:
    m = load_machine(STANDARD_MACHINE_ID)
    assert STANDARD_MACHINE_ID in list_machines()
    assert m.sad_mm == 1000.0 and m.energy == "6MV"
    assert m.n_pairs == 60 and len(m.leaf_widths_mm) == 60
    # Millennium 120: 40 central 5 mm leaves covering 20 cm, 10 mm leaves outside, 40 cm in all
    assert m.leaf_boundaries_mm[0] == -200.0 and m.leaf_boundaries_mm[-1] == 200.0
    assert m.leaf_boundaries_mm[10] == -100.0 and m.leaf_boundaries_mm[50] == 100.0
    assert all(w == 5.0 for w in m.leaf_widths_mm[10:50])
    assert m.interdigitation is True and m.mu_calibration_cgy_per_mu == 1.0
    assert m.content_hash == hashlib.sha256(Path(m.source_path).read_bytes()).hexdigest()


def _write_variant(tmp_path: Path, edit) -> Path:
    doc = yaml.safe_load(Path(load_machine().source_path).read_text())
    edit(doc)
    path = tmp_path / "variant.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda d: d["geometry"].pop("sad_mm"), "geometry.sad_mm"),
        (lambda d: d["mlc"].__setitem__("n_pairs", 59), "mlc.n_pairs"),
        (lambda d: d["dose_kernel"]["components"][1].__setitem__("sigma0_mm", -3), "dose_kernel.components[1].sigma0_mm"),
        (lambda d: d["geometry"]["jaw_limits_mm"].__setitem__("Y1", [10, -10]), "geometry.jaw_limits_mm.Y1"),
        (lambda d: d.__setitem__("schema", "other/9"), "schema"),
        (lambda d: d["beam_data"]["pdd"][0]["percent"].pop(), "beam_data.pdd[0].percent"),
    ],
)
def test_loader_names_the_bad_field(tmp_path: Path, edit, field: str) -> None:
    with pytest.raises(MachineModelError, match=field.replace("[", r"\[").replace("]", r"\]")):
        load_machine(_write_variant(tmp_path, edit))


def test_unknown_machine_id_lists_the_known_ones() -> None:
    with pytest.raises(MachineModelError, match=STANDARD_MACHINE_ID):
        load_machine("no-such-linac")
