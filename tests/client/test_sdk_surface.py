"""SDK first: every hospital and admin RPC has an SDK method, the CLI calls only the SDK, enum
names are converted in one place, the CLI's modules import one another without a cycle, and
``rtgrid --help`` loads neither gRPC nor the server side."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from rtgrid.client.enums import enum_choices, enum_name, enum_value
from rtgrid.protos.v1 import admin_pb2, common_pb2, hospital_pb2

CLIENT = Path(__file__).resolve().parents[2] / "client"
CLI = CLIENT / "cli"


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _stub_calls(path: Path) -> set[tuple[str, str]]:
    """``(stub, Method)`` for every ``X.hospital.Method`` / ``X.admin.Method`` in a file."""
    return {(node.value.attr, node.attr) for node in ast.walk(_tree(path))
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
            and node.value.attr in ("hospital", "admin") and node.attr[:1].isupper()}


@pytest.mark.parametrize("stub, service", [("hospital", hospital_pb2.DESCRIPTOR.services_by_name["HospitalService"]),
                                           ("admin", admin_pb2.DESCRIPTOR.services_by_name["AdminService"])])
def test_every_rpc_has_an_sdk_method(stub, service):
    called = {method for s, method in _stub_calls(CLIENT / "sdk.py") if s == stub}
    assert {m.name for m in service.methods} - called == set()


def test_the_cli_calls_only_the_sdk():
    for path in sorted(CLI.rglob("*.py")):
        assert _stub_calls(path) == set(), f"{path.name} calls a raw stub"
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Attribute) and node.attr == "call":
                pytest.fail(f"{path.name}:{node.lineno} calls Client.call with a raw request")
            if isinstance(node, ast.ImportFrom) and node.module == "rtgrid.protos.v1":
                names = {a.name for a in node.names}
                assert names <= {"common_pb2"}, f"{path.name} builds requests itself: {sorted(names)}"


def test_enum_names_are_converted_in_one_place():
    for path in sorted(CLIENT.rglob("*.py")):
        if path.name == "enums.py":
            continue
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                assert node.func.attr not in ("Name", "Value", "removeprefix"), \
                    f"{path.relative_to(CLIENT)}:{node.lineno} converts an enum name itself"


@pytest.mark.parametrize("enum", [common_pb2.JobState, common_pb2.ShardState, common_pb2.AgentState,
                                  common_pb2.EventType, common_pb2.DeviceStatus])
def test_enum_names_round_trip(enum):
    choices = enum_choices(enum)
    assert len(choices) == len(enum.values()) - 1 and all(c == c.lower() and c for c in choices)
    for value in enum.values():
        if value:
            assert enum_value(enum, enum_name(enum, value)) == value
            assert enum_value(enum, enum_name(enum, value).upper()) == value


def test_enum_names_read_as_people_type_them():
    assert enum_name(common_pb2.JobState, common_pb2.JOB_STATE_SUCCEEDED) == "succeeded"
    assert enum_name(common_pb2.AgentState, common_pb2.AGENT_STATE_DRAINING) == "draining"
    assert enum_value(common_pb2.DeviceStatus, "down") == common_pb2.DEVICE_STATUS_DOWN
    assert enum_name(common_pb2.JobState, 99) == "unknown(99)"  # a newer master's state


@pytest.mark.parametrize("name", ["broken", "", "unspecified", "DEVICE_STATUS_DOWN"])
def test_a_bad_enum_name_is_refused_with_the_choices(name):
    with pytest.raises(ValueError, match="is not a DeviceStatus: one of available, busy, down"):
        enum_value(common_pb2.DeviceStatus, name)


def _relative_imports(path: Path) -> set[str]:
    """The sibling modules of client/cli a module imports (at any depth: a lazy import counts)."""
    found = set()
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found |= {node.module} if node.module else {a.name for a in node.names}
    return found & {p.stem for p in CLI.glob("*.py")}


def test_the_cli_modules_import_without_a_cycle():
    graph = {p.stem: _relative_imports(p) for p in CLI.glob("*.py")}

    def visit(module: str, path: tuple[str, ...]) -> None:
        for imported in graph[module]:
            assert imported not in path, f"import cycle: {' -> '.join(path + (module, imported))}"
            visit(imported, path + (module,))

    for module in graph:
        visit(module, ())


def test_help_loads_neither_grpc_nor_the_server_side():
    # Finding a server command's source imports its (empty) package __init__s, no module of code.
    probe = ("import sys\nsys.argv = ['rtgrid', '--help']\nfrom rtgrid.client.cli.main import main\n"
             "try:\n    main()\nexcept SystemExit:\n    pass\n"
             "heavy = ('grpc', 'google.protobuf', 'ray', 'torch', 'numpy', 'rtgrid.master', 'rtgrid.agent', "
             "'rtgrid.engines', 'rtgrid.protos.v1')\n"
             "print('LOADED', sorted({m for m in sys.modules for h in heavy if (m == h or m.startswith(h + '.'))\n"
             "                        and not (m.startswith('rtgrid.') and hasattr(sys.modules[m], '__path__'))}))")
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == "LOADED []"
    for command in ("upload", "watch", "admin", "up", "agent", "train-seg", "certs"):  # server ones listed too
        assert f" {command} " in run.stdout
