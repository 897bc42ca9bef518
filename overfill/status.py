"""How a request ends: `FinishReason` when it completed, `StatusCode` when it failed. Typed end to end.

Both are `StrEnum`s, so their values are the strings the public API carries (`GenerateResponse.finish_reason`, the
gRPC status names) and compare equal to them. `StatusCode` mirrors gRPC's codes by name; `to_grpc` and `of_grpc` are
the one mapping between the two, and grpc is imported only there (the scheduler imports this module and stays free
of it).
"""

from __future__ import annotations

from enum import StrEnum


class FinishReason(StrEnum):
    """Why a request completed (the public `finish_reason`)."""

    STOP = "stop"      # an EOS token (included in the output) or a stop string
    LENGTH = "length"  # max_tokens reached


class StatusCode(StrEnum):
    """Why a request failed: gRPC's status codes (OK excluded), by name.

    What each means in this service is in docs/architecture.md ("Errors"): INVALID_ARGUMENT names the field,
    RESOURCE_EXHAUSTED is back-pressure, UNAVAILABLE a replica or KV link gone, ABORTED a lease gone, INTERNAL a bug.
    """

    CANCELLED = "CANCELLED"
    UNKNOWN = "UNKNOWN"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    ABORTED = "ABORTED"
    OUT_OF_RANGE = "OUT_OF_RANGE"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    INTERNAL = "INTERNAL"
    UNAVAILABLE = "UNAVAILABLE"
    DATA_LOSS = "DATA_LOSS"
    UNAUTHENTICATED = "UNAUTHENTICATED"

    def to_grpc(self):
        """The `grpc.StatusCode` of the same name."""
        import grpc

        return grpc.StatusCode[self.name]

    @classmethod
    def of_grpc(cls, code) -> StatusCode:
        """A `grpc.StatusCode` (never OK: a failed call has a failing status) as a StatusCode."""
        return cls[code.name]
