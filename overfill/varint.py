"""Protobuf base-128 varints read straight from a buffer: shared by the hand-written wire readers (the KV chunk codec,
the request parser that explains what protobuf refused)."""

from __future__ import annotations

MAX_VARINT_BYTES = 10  # a 64-bit value


class TruncatedVarint(ValueError):
    def __init__(self):
        super().__init__("truncated varint")


class OverlongVarint(ValueError):
    def __init__(self):
        super().__init__(f"varint longer than {MAX_VARINT_BYTES} bytes")


def read_varint(buf: memoryview | bytes, pos: int) -> tuple[int, int]:
    """The varint starting at `pos` -> (value, position after it)."""
    result = 0
    for index in range(MAX_VARINT_BYTES):
        if pos >= len(buf):
            raise TruncatedVarint()
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << (7 * index)
        if not byte & 0x80:
            return result, pos
    raise OverlongVarint()
