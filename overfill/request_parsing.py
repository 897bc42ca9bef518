"""Parsing a gRPC request's bytes so that bytes protobuf refuses become a clear INVALID_ARGUMENT, not UNKNOWN.

A gRPC server deserializes a request before any servicer code runs; when protobuf raises (invalid UTF-8 in a proto3
`string`, a truncated or garbled frame) grpcio answers UNKNOWN (asyncio server) or INTERNAL (thread-pool server),
statuses reserved for our own bugs. `lenient_parser(Message)` is a request deserializer that never raises: it returns
the parsed message, or an `UnparsableRequest` whose message names the field at fault (`stop[1] is not valid UTF-8`),
which the servicer then refuses with INVALID_ARGUMENT.

The deserializer runs on the gRPC server's event loop, before any API key is checked, so refusing must cost the same
small time whatever the request: protobuf's own parser (C) reads the bytes, and the explanation walks at most
MAX_FIELDS_EXPLAINED fields in Python (about a millisecond); a fault past them is refused without its field's name.
An 8 MiB frame of 4 million fields would otherwise hold the loop, and every stream it serves, for seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message

from overfill.varint import MAX_VARINT_BYTES, OverlongVarint, TruncatedVarint, read_varint

_VARINT, _FIXED64, _LENGTH_DELIMITED, _FIXED32 = 0, 1, 2, 5
MAX_FIELDS_EXPLAINED = 4096  # fields (nested ones included) the explanation reads before it gives up naming one


@dataclass(frozen=True)
class UnparsableRequest:
    """Request bytes protobuf refused. Picklable: Ray Serve's proxy hands it on to the replica as the request."""

    message_type: str   # e.g. overfill.v1.GenerateRequest
    message: str        # names the field when one is at fault


def lenient_parser(message_class: type[Message],
                   max_bytes: int | None = None) -> Callable[[bytes], Message | UnparsableRequest]:
    """A gRPC request_deserializer that returns the message or an UnparsableRequest, and never raises. Requests over
    `max_bytes` are refused unparsed (no copy of them travels on)."""

    def parse(raw: bytes) -> Message | UnparsableRequest:
        if max_bytes is not None and len(raw) > max_bytes:
            return UnparsableRequest(message_class.DESCRIPTOR.full_name,
                                     f"the request is {len(raw)} bytes, more than the {max_bytes} accepted")
        try:
            return message_class.FromString(raw)
        except DecodeError:
            name = message_class.DESCRIPTOR.full_name
            try:
                return UnparsableRequest(name, explain_unparsable(bytes(raw), message_class.DESCRIPTOR))
            except Exception:  # noqa: BLE001  a deserializer that raises turns into UNKNOWN/INTERNAL
                return UnparsableRequest(name, f"the request is not a valid {name}")

    return parse


def explain_unparsable(raw: bytes, descriptor: Descriptor) -> str:
    """Why protobuf refuses `raw` as a `descriptor` message, naming the field (path as in proto: a.b[2].c)."""
    try:
        problem = _first_problem(memoryview(raw), descriptor, "", _FieldBudget(MAX_FIELDS_EXPLAINED))
    except _Malformed as e:
        problem = str(e)
    except _BudgetSpent:
        return (f"the request is not a valid {descriptor.full_name} (its first {MAX_FIELDS_EXPLAINED} fields are "
                f"well formed; the fault lies after them)")
    return problem or f"the request is not a valid {descriptor.full_name}"


class _Malformed(Exception):
    pass


class _BudgetSpent(Exception):
    pass


@dataclass
class _FieldBudget:
    fields_left: int

    def spend(self) -> None:
        self.fields_left -= 1
        if self.fields_left < 0:
            raise _BudgetSpent


def _first_problem(buf: memoryview, descriptor: Descriptor, prefix: str, budget: _FieldBudget) -> str | None:
    """Walk the wire format of one message: the first field whose bytes protobuf would refuse, or None."""
    counts: dict[int, int] = {}
    pos = 0
    while pos < len(buf):
        budget.spend()
        tag, pos = _varint(buf, pos, prefix or "the request")
        number, wire_type = tag >> 3, tag & 7
        field = descriptor.fields_by_number.get(number)
        name = f"{prefix}{field.name}" if field is not None else f"{prefix}field {number}"
        if field is not None and field.is_repeated:
            name += f"[{counts.get(number, 0)}]"
            counts[number] = counts.get(number, 0) + 1
        if number == 0:
            raise _Malformed(f"{prefix or 'the request'}: field number 0 is not valid protobuf")
        if wire_type == _VARINT:
            _, pos = _varint(buf, pos, name)
        elif wire_type in (_FIXED64, _FIXED32):
            pos += 8 if wire_type == _FIXED64 else 4
            if pos > len(buf):
                raise _Malformed(f"{name} is truncated")
        elif wire_type == _LENGTH_DELIMITED:
            size, pos = _varint(buf, pos, name)
            if pos + size > len(buf):
                raise _Malformed(f"{name} is truncated (declares {size} bytes, {len(buf) - pos} left)")
            value, pos = buf[pos:pos + size], pos + size
            if field is not None and field.type == FieldDescriptor.TYPE_STRING:
                try:
                    str(value, "utf-8")
                except UnicodeDecodeError:
                    return f"{name} is not valid UTF-8"
            elif field is not None and field.type == FieldDescriptor.TYPE_MESSAGE:
                problem = _first_problem(value, field.message_type, f"{name}.", budget)
                if problem:
                    return problem
        else:
            raise _Malformed(f"{name} has wire type {wire_type}, which is not valid protobuf")
    return None


def _varint(buf: memoryview, pos: int, name: str) -> tuple[int, int]:
    try:
        return read_varint(buf, pos)
    except TruncatedVarint:
        raise _Malformed(f"{name} is truncated") from None
    except OverlongVarint:
        raise _Malformed(f"{name} holds a varint longer than {MAX_VARINT_BYTES} bytes") from None
