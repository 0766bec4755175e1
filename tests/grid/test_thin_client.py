"""The thin client (issue #16): ``pip install rtgrid`` is the SDK and the hospital's command line
without ray, torch or scipy, and that is enough for the whole hospital flow.

The wheel is built offline from a copy of the sources and its Requires-Dist read; the flow
(upload, submit, watch, fetch) runs against a real grid in a Python that refuses to import the
server side's packages (a ``sitecustomize`` on ``PYTHONPATH`` puts a refusing finder first on
``sys.meta_path``), so any heavy import hidden in the client fails the test. Server commands on
such an install end in one line naming ``pip install 'rtgrid[server]'``.
"""

from __future__ import annotations

import email.parser
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pydicom
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from rtgrid.engines.phantom import write_phantom_case

from .conftest import rtgrid_cmd

ROOT = Path(__file__).resolve().parents[2]
# Import names of what only `rtgrid[server]` and `rtgrid[gateway]` install.
SERVER_IMPORTS = ("ray", "torch", "scipy", "SimpleITK", "numpy", "skimage", "matplotlib", "PIL", "cryptography",
                  "prometheus_client", "psycopg", "pylibjpeg", "grpc_health", "grpc_reflection", "yaml", "pynetdicom")
# The client must not need the server's own code either.
SERVER_CODE = ("rtgrid.master", "rtgrid.agent", "rtgrid.engines")
THIN_REQUIRES = {"grpcio", "protobuf", "pydicom", "tenacity", "typer", "rich"}
NEVER_THIN = {"ray", "torch", "scipy", "simpleitk", "numpy"}

BLOCKER = '''"""Test-only: this Python refuses the packages a thin rtgrid install lacks."""
import sys

BLOCKED = {blocked!r}


class _NotInstalled:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in BLOCKED):
            raise ModuleNotFoundError(f"No module named {{name!r}} (thin-client test)", name=name)
        return None


sys.meta_path.insert(0, _NotInstalled)
'''


def thin_env(folder: Path, blocked: tuple[str, ...], extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a Python that refuses ``blocked`` (modules and their submodules)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(BLOCKER.format(blocked=blocked))
    path = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, **(extra or {}), "PYTHONPATH": path}


def run_thin(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(rtgrid_cmd(*args), capture_output=True, text=True, timeout=timeout, env=env)


def _ok(run: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert "Traceback" not in run.stderr, run.stderr
    assert run.returncode == 0, run.stderr
    return run


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """rtgrid's wheel, built offline from a copy of the sources (the checkout stays untouched)."""
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for root in ("protos", "master", "agent", "engines", "client"):
        shutil.copytree(ROOT / root, src / root, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "-q", "-w", str(work / "dist"), str(src)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    [found] = (work / "dist").glob("rtgrid-*.whl")
    return found


def _requires(wheel_path: Path) -> dict[str, set[str]]:
    """Requirement names by extra ("" for the base set), from the wheel's METADATA."""
    with zipfile.ZipFile(wheel_path) as whl:
        [meta] = [n for n in whl.namelist() if n.endswith(".dist-info/METADATA")]
        message = email.parser.Parser().parsestr(whl.read(meta).decode())
    extras = message.get_all("Provides-Extra") or []
    by_extra: dict[str, set[str]] = {}
    for line in message.get_all("Requires-Dist") or []:
        req = Requirement(line)
        extra = next((e for e in extras if req.marker and req.marker.evaluate({"extra": e})), "")
        name = canonicalize_name(req.name) + (f"[{','.join(sorted(req.extras))}]" if req.extras else "")
        by_extra.setdefault(extra, set()).add(name)
    return by_extra


def test_the_wheel_installs_a_thin_client(wheel):
    requires = _requires(wheel)
    assert requires[""] == THIN_REQUIRES
    assert not {r.split("[")[0] for r in requires[""]} & NEVER_THIN
    assert {"ray", "torch", "scipy", "simpleitk", "numpy"} <= requires["server"]
    assert {"pynetdicom", "pyyaml"} <= requires["gateway"]
    assert "rtgrid[gateway,server]" in requires["test"]  # `make install` (-e '.[test]') still gets everything
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        [entry_points] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        commands = whl.read(entry_points).decode()
    assert {"rtgrid/client/sdk.py", "rtgrid/client/cli/main.py", "rtgrid/protos/v1/hospital_pb2.py"} <= names
    assert "rtgrid = rtgrid.client.cli.main:main" in commands and "[rtgrid.commands]" in commands


def test_the_blocker_refuses_what_a_thin_install_lacks(tmp_path):
    env = thin_env(tmp_path / "thin", SERVER_IMPORTS + SERVER_CODE)
    for module in ("ray", "torch", "numpy", "rtgrid.engines.phantom"):
        run = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, env=env,
                             timeout=120)
        assert run.returncode != 0 and "thin-client test" in run.stderr, (module, run.stderr)
    run = subprocess.run([sys.executable, "-c", "import rtgrid.client.sdk, rtgrid.client.pseudonym"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr


def test_the_hospital_flow_runs_on_a_thin_client(grid, tmp_path):
    phantom = write_phantom_case(tmp_path / "phantom", shape=(12, 64, 64), spacing_mm=(3.0, 3.0, 3.0), seed=5)
    original = pydicom.dcmread(phantom.ct_files[0], stop_before_pixels=True)
    mapping = tmp_path / "pseudonyms.json"
    env = thin_env(tmp_path / "thin", SERVER_IMPORTS + SERVER_CODE, grid.env())

    uploaded = json.loads(_ok(run_thin(env, "upload", str(phantom.ct_dir), "--pseudonymize", "--pseudonym-map",
                                       str(mapping), "--format", "json")).stdout)
    assert uploaded["files"] == 12
    submitted = json.loads(_ok(run_thin(env, "submit", uploaded["case_id"], "--kind", "contour", "--format",
                                        "json")).stdout)
    watched = _ok(run_thin(env, "watch", submitted["job_id"], "--format", "json", timeout=600))
    assert json.loads(watched.stdout.splitlines()[-1])["state"] == "JOB_STATE_SUCCEEDED"
    out = tmp_path / "results"
    fetched = [json.loads(line) for line in _ok(run_thin(env, "fetch", submitted["job_id"], "--out", str(out),
                                                         "--reidentify", "--pseudonym-map", str(mapping),
                                                         "--format", "json")).stdout.splitlines()]
    modalities = {Path(f["path"]).name: f["modality"] for f in fetched}
    assert modalities["RS.contours.dcm"] == "RTSTRUCT"

    # The grid saw only the pseudonym; the hospital got its patient back.
    with grid.client() as client:
        case = client.case(uploaded["case_id"])
    assert case.n_files == 12 and original.PatientID not in case.label
    rtstruct = pydicom.dcmread(out / "RS.contours.dcm", stop_before_pixels=True)
    assert rtstruct.PatientID == original.PatientID
    assert rtstruct.StudyInstanceUID == original.StudyInstanceUID


@pytest.mark.parametrize("args", [("up", "--port", "0"), ("agent",), ("train-seg", "x.json", "--out", "x"),
                                  ("certs",), ("demo",)])
def test_a_server_command_on_a_thin_client_says_what_to_install(tmp_path, args):
    run = run_thin(thin_env(tmp_path / "thin", SERVER_IMPORTS), *args, timeout=120)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    [line] = run.stderr.strip().splitlines()
    assert line.startswith(f"error: `rtgrid {args[0]}` runs the grid's server side") and \
        line.endswith("pip install 'rtgrid[server]'"), line


def test_help_and_the_gateway_on_a_thin_client(tmp_path):
    env = thin_env(tmp_path / "thin", SERVER_IMPORTS + SERVER_CODE)
    helped = _ok(run_thin(env, "--help", timeout=120))
    assert " up " in helped.stdout and " upload " in helped.stdout  # server commands listed, not loaded
    gateway = run_thin(env, "gateway", "--ae-title", "RTGRID", timeout=120)
    assert gateway.returncode == 2 and "Traceback" not in gateway.stderr, gateway.stderr
    assert gateway.stderr.strip().splitlines() == [
        "error: `rtgrid gateway` needs the DICOM gateway's packages (no module 'pynetdicom'): pip install 'rtgrid[gateway]'"]


def test_an_operator_sets_a_device_from_a_thin_client(grid, tmp_path):
    env = thin_env(tmp_path / "thin", SERVER_IMPORTS + SERVER_CODE, grid.env())
    listed = [json.loads(line) for line in _ok(run_thin(env, "admin", "devices", "--format", "json")).stdout.splitlines()]
    model_id = next(r["model_id"] for r in listed if r["record"] == "model")
    added = json.loads(_ok(run_thin(env, "admin", "devices", "set", "THIN-LINAC", "--hospital", "thin-hospital",
                                    "--model", model_id, "--status", "down", "--format", "json")).stdout)
    assert (added["device_id"], added["status"]) == ("THIN-LINAC", "down")
    changed = json.loads(_ok(run_thin(env, "admin", "devices", "set", "THIN-LINAC", "--queue", "4",
                                      "--format", "json")).stdout)
    assert (changed["status"], changed["queue_length"]) == ("down", 4)  # an absent --status leaves it
    refused = run_thin({**env, "COLUMNS": "300"}, "admin", "devices", "set", "THIN-LINAC", "--status", "broken")
    assert refused.returncode == 2 and "is not a DeviceStatus: one of available, busy, down" in refused.stderr
