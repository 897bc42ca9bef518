from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class KVGeometry(_message.Message):
    __slots__ = ("num_layers", "num_kv_heads", "head_dim")
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    NUM_KV_HEADS_FIELD_NUMBER: _ClassVar[int]
    HEAD_DIM_FIELD_NUMBER: _ClassVar[int]
    num_layers: int
    num_kv_heads: int
    head_dim: int
    def __init__(self, num_layers: _Optional[int] = ..., num_kv_heads: _Optional[int] = ..., head_dim: _Optional[int] = ...) -> None: ...

class KVHeader(_message.Message):
    __slots__ = ("request_id", "geometry", "dtype", "num_tokens", "total_bytes")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    GEOMETRY_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    geometry: KVGeometry
    dtype: str
    num_tokens: int
    total_bytes: int
    def __init__(self, request_id: _Optional[str] = ..., geometry: _Optional[_Union[KVGeometry, _Mapping]] = ..., dtype: _Optional[str] = ..., num_tokens: _Optional[int] = ..., total_bytes: _Optional[int] = ...) -> None: ...

class KVChunk(_message.Message):
    __slots__ = ("kind", "offset", "data")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KEY: _ClassVar[KVChunk.Kind]
        VALUE: _ClassVar[KVChunk.Kind]
    KEY: KVChunk.Kind
    VALUE: KVChunk.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    kind: KVChunk.Kind
    offset: int
    data: bytes
    def __init__(self, kind: _Optional[_Union[KVChunk.Kind, str]] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class KVMessage(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: KVHeader
    chunk: KVChunk
    def __init__(self, header: _Optional[_Union[KVHeader, _Mapping]] = ..., chunk: _Optional[_Union[KVChunk, _Mapping]] = ...) -> None: ...

class PullRequest(_message.Message):
    __slots__ = ("request_id", "expected_geometry", "expected_dtype")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_GEOMETRY_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_DTYPE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    expected_geometry: KVGeometry
    expected_dtype: str
    def __init__(self, request_id: _Optional[str] = ..., expected_geometry: _Optional[_Union[KVGeometry, _Mapping]] = ..., expected_dtype: _Optional[str] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    def __init__(self, request_id: _Optional[str] = ...) -> None: ...

class ReleaseResponse(_message.Message):
    __slots__ = ("released",)
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    released: bool
    def __init__(self, released: _Optional[bool] = ...) -> None: ...

class RenewRequest(_message.Message):
    __slots__ = ("request_ids",)
    REQUEST_IDS_FIELD_NUMBER: _ClassVar[int]
    request_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, request_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class RenewResponse(_message.Message):
    __slots__ = ("ttl_s", "not_found_request_ids")
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    NOT_FOUND_REQUEST_IDS_FIELD_NUMBER: _ClassVar[int]
    ttl_s: float
    not_found_request_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ttl_s: _Optional[float] = ..., not_found_request_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class OpenGroupRequest(_message.Message):
    __slots__ = ("receiver_id", "backend")
    RECEIVER_ID_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    receiver_id: str
    backend: str
    def __init__(self, receiver_id: _Optional[str] = ..., backend: _Optional[str] = ...) -> None: ...

class OpenGroupResponse(_message.Message):
    __slots__ = ("group_id", "store_address")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    STORE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    group_id: str
    store_address: str
    def __init__(self, group_id: _Optional[str] = ..., store_address: _Optional[str] = ...) -> None: ...

class SendRequest(_message.Message):
    __slots__ = ("request_id", "expected_geometry", "expected_dtype", "group_id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_GEOMETRY_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_DTYPE_FIELD_NUMBER: _ClassVar[int]
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    expected_geometry: KVGeometry
    expected_dtype: str
    group_id: str
    def __init__(self, request_id: _Optional[str] = ..., expected_geometry: _Optional[_Union[KVGeometry, _Mapping]] = ..., expected_dtype: _Optional[str] = ..., group_id: _Optional[str] = ...) -> None: ...
