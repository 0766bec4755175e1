"""The house rules that keep the layers apart, and the one-command proto generation."""

from __future__ import annotations

import ast
import filecmp
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _imports(folder: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in (ROOT / folder).rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        found[str(path.relative_to(ROOT))] = names
    return found


@pytest.mark.parametrize(
    "folder, forbidden",
    [
        ("engines", ("grpc", "ray", "rtgrid.master", "rtgrid.agent", "rtgrid.client", "rtgrid.protos", "sqlite3")),
        ("client", ("ray", "rtgrid.master", "rtgrid.agent", "rtgrid.engines", "numpy", "torch")),
        ("master", ("rtgrid.agent", "rtgrid.client")),
        ("agent", ("rtgrid.master", "rtgrid.client")),
    ],
)
def test_layers_do_not_cross(folder, forbidden):
    offenders = {
        path: sorted(n for n in names if any(n == f or n.startswith(f + ".") for f in forbidden))
        for path, names in _imports(folder).items()
    }
    assert {p: n for p, n in offenders.items() if n} == {}


def test_proto_generation_is_a_no_op(tmp_path):
    from rtgrid.protos.generate import GENERATED_DIR, generate

    generate(tmp_path)
    committed = sorted(p.name for p in GENERATED_DIR.iterdir() if p.is_file() and p.suffix in (".py", ".pyi"))
    fresh = sorted(p.name for p in tmp_path.iterdir())
    assert committed == fresh
    match, mismatch, errors = filecmp.cmpfiles(GENERATED_DIR, tmp_path, fresh, shallow=False)
    assert mismatch == [] and errors == [], f"run `make proto`: {mismatch or errors} differ"
