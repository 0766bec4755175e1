"""Domain errors of the master; the servicers map each to one gRPC status code."""

from __future__ import annotations

import grpc


class MasterError(Exception):
    """Base: a request the master refuses, with a message a user can act on."""

    status = grpc.StatusCode.INTERNAL


class InvalidArgument(MasterError):
    status = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(MasterError):
    status = grpc.StatusCode.NOT_FOUND


class AlreadyExists(MasterError):
    status = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(MasterError):
    status = grpc.StatusCode.PERMISSION_DENIED


class FailedPrecondition(MasterError):
    status = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(MasterError):
    status = grpc.StatusCode.RESOURCE_EXHAUSTED


class DataLoss(MasterError):
    status = grpc.StatusCode.DATA_LOSS


class DeadlineExceeded(MasterError):
    status = grpc.StatusCode.DEADLINE_EXCEEDED
