"""The ``rtgrid`` command without a master: local problems and an unreachable master each end in
one line on stderr, a documented exit code and no traceback, quickly."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from rtgrid.client.cli.output import EXIT_LOCAL, EXIT_UNREACHABLE

UNREACHABLE_BOUND_S = 5.0


def rtgrid(*args: str, timeout: float = 60) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    run = subprocess.run([sys.executable, "-c", "from rtgrid.client.cli.main import main; main()", *args],
                         capture_output=True, text=True, timeout=timeout)
    return run, time.monotonic() - start


def _one_line_error(run: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in run.stderr, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr
    return lines[0]


def _dead_target() -> str:
    with socket.socket() as s:  # a port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def test_version():
    run, _ = rtgrid("--version")
    assert run.returncode == 0 and run.stdout.strip() == "rtgrid 0.1.0"


@pytest.mark.parametrize("args", [("cases",), ("watch", "J"), ("admin", "status")])  # hospital, stream, admin
def test_unreachable_master_is_said_within_five_seconds(args):
    target = _dead_target()
    run, elapsed = rtgrid(*args, "--target", target)
    assert run.returncode == EXIT_UNREACHABLE
    assert target in _one_line_error(run)
    assert elapsed < UNREACHABLE_BOUND_S, f"{elapsed:.1f} s"


def _dicom(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(get_testdata_file("CT_small.dcm"), folder / name))


@pytest.mark.parametrize("problem, expected", [
    ("missing", "does not exist"),
    ("empty", "no files under"),
    ("duplicate", "two files share the name 'CT.dcm'"),
    ("unreadable", "cannot read /proc/self/mem"),  # reading it fails (EIO), even for root
])
def test_local_problems_are_one_line_and_exit_5(tmp_path, problem, expected):
    folder = tmp_path / "series"
    args = [str(folder)]
    if problem == "empty":
        folder.mkdir()
    elif problem == "duplicate":
        _dicom(folder / "a", "CT.dcm")
        _dicom(folder / "b", "CT.dcm")
    elif problem == "unreadable":
        _dicom(folder, "CT.dcm")
        args.append("/proc/self/mem")
    run, elapsed = rtgrid("upload", *args, "--target", _dead_target())  # told before any connection
    assert run.returncode == EXIT_LOCAL
    assert expected in _one_line_error(run)
    assert elapsed < UNREACHABLE_BOUND_S


def test_an_unsafe_artifact_name_is_one_line_and_exit_3_not_a_traceback(capsys):
    from rtgrid.client.cli.output import EXIT_REFUSED, rpc_errors
    from rtgrid.client.sdk import safe_file_name

    @rpc_errors
    def fetch_like() -> None:
        safe_file_name("../RS.contours.dcm")

    with pytest.raises(SystemExit) as exited:
        fetch_like()
    assert exited.value.code == EXIT_REFUSED
    assert capsys.readouterr().err == "error: refusing artifact name '../RS.contours.dcm': not a single safe file name\n"
