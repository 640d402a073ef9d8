from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DataFrameProto(_message.Message):
    __slots__ = ("index", "tags", "data", "message")
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    index: int
    tags: _containers.ScalarMap[str, str]
    data: bytes
    message: str
    def __init__(self, index: _Optional[int] = ..., tags: _Optional[_Mapping[str, str]] = ..., data: _Optional[bytes] = ..., message: _Optional[str] = ...) -> None: ...

class DataFrameListProto(_message.Message):
    __slots__ = ("index",)
    INDEX_FIELD_NUMBER: _ClassVar[int]
    index: _containers.RepeatedCompositeFieldContainer[DataFrameProto]
    def __init__(self, index: _Optional[_Iterable[_Union[DataFrameProto, _Mapping]]] = ...) -> None: ...
