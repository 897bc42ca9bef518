"""KVMessage chunk frames in protobuf wire format, encoded and decoded by hand to avoid copies of the payload.

The bytes are exactly what protobuf makes of `KVMessage{chunk: KVChunk{kind, offset, data}}` (any protobuf peer
reads them), but building one costs a single copy of `data` instead of four (bytes(), message construction,
serialization, parsing), which is what holds Python gRPC back on multi-megabyte KV.
    KVMessage: field 2 (chunk), length-delimited   -> 0x12 <len> <KVChunk>
    KVChunk:   field 1 kind varint 0x08, field 2 offset varint 0x10, field 3 data length-delimited 0x1a
Headers (small) go through the generated classes as usual.
"""

from __future__ import annotations

from overfill.transport.wire import Chunk
from overfill.varint import read_varint

_CHUNK_FIELD = 0x12   # KVMessage.chunk, wire type 2
_HEADER_FIELD = 0x0A  # KVMessage.header, wire type 2


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_chunk_message(chunk: Chunk) -> bytes:
    """Serialized KVMessage{chunk: ...}; one copy of the payload."""
    inner_head = (b"\x08" + _varint(chunk.kind)) if chunk.kind else b""
    inner_head += b"\x10" + _varint(chunk.offset) + b"\x1a" + _varint(len(chunk.data))
    return b"".join((bytes([_CHUNK_FIELD]), _varint(len(inner_head) + len(chunk.data)), inner_head, chunk.data))


def is_header_message(raw: bytes) -> bool:
    return len(raw) > 0 and raw[0] == _HEADER_FIELD


def decode_chunk_message(raw: bytes) -> Chunk:
    """Parse a serialized KVMessage holding a chunk; `data` is a view into `raw` (no copy)."""
    buf = memoryview(raw)
    if not buf or buf[0] != _CHUNK_FIELD:
        raise ValueError("not a KVMessage chunk")
    length, pos = read_varint(buf, 1)
    end = pos + length
    if end != len(buf):
        raise ValueError("KVMessage chunk length does not match the frame")
    kind = offset = 0
    data = memoryview(b"")
    while pos < end:
        tag, pos = read_varint(buf, pos)
        field, wire_type = tag >> 3, tag & 7
        if wire_type == 0:
            value, pos = read_varint(buf, pos)
            if field == 1:
                kind = value
            elif field == 2:
                offset = value
        elif wire_type == 2:
            size, pos = read_varint(buf, pos)
            if pos + size > end:
                raise ValueError("truncated KVChunk field")
            if field == 3:
                data = buf[pos:pos + size]
            pos += size
        else:
            raise ValueError(f"unexpected wire type {wire_type} in KVChunk")
    return Chunk(kind, offset, data)
