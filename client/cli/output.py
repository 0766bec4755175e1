"""Printing for the CLI: one JSON object per line with ``--format json``, plain text otherwise."""

from __future__ import annotations

import functools
import json
import sys
from enum import Enum
from typing import Any


EXIT_JOB_FAILED, EXIT_USAGE, EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_LOCAL = 1, 2, 3, 4, 5
"""Exit codes: the job failed or was cancelled; bad usage; the master refused the request; the
master could not be reached; a local file problem (missing or empty folder, two files with one
name, an unreadable or non-DICOM file, a folder that cannot be written)."""


class Format(str, Enum):
    text = "text"
    json = "json"


def as_dict(message) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict  # protobuf loads when a command runs, not for --help

    return MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def emit(fmt: Format, record: dict[str, Any], text: str) -> None:
    print(json.dumps(record, sort_keys=True) if fmt == Format.json else text, flush=True)


def fail(message: str, code: int) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def rpc_errors(func):
    """Turn gRPC errors and local file problems into one line and an exit code that means something."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        import grpc  # grpc and the SDK load when a command runs, not for --help

        from ..sdk import LocalFileError, UnsafeArtifactName

        try:
            return func(*args, **kwargs)
        except grpc.RpcError as exc:
            code = EXIT_UNREACHABLE if exc.code() == grpc.StatusCode.UNAVAILABLE else EXIT_REFUSED
            fail(f"{exc.code().name}: {exc.details()}", code)
        except ConnectionError as exc:  # the SDK's MasterUnreachable
            fail(str(exc), EXIT_UNREACHABLE)
        except UnsafeArtifactName as exc:  # the master sent a name that is not one file name
            fail(str(exc), EXIT_REFUSED)
        except LocalFileError as exc:
            fail(str(exc), EXIT_LOCAL)
        except OSError as exc:  # e.g. a results folder that cannot be written
            fail(f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc), EXIT_LOCAL)

    return wrapper
