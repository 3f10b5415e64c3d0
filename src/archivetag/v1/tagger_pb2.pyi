from archivetag.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TagRequest(_message.Message):
    __slots__ = ("image", "context", "threshold", "max_tags", "vocabulary", "ocr")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MAX_TAGS_FIELD_NUMBER: _ClassVar[int]
    VOCABULARY_FIELD_NUMBER: _ClassVar[int]
    OCR_FIELD_NUMBER: _ClassVar[int]
    image: _common_pb2.Image
    context: _common_pb2.ImageContext
    threshold: float
    max_tags: int
    vocabulary: _containers.RepeatedScalarFieldContainer[str]
    ocr: _common_pb2.OcrMode
    def __init__(self, image: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., context: _Optional[_Union[_common_pb2.ImageContext, _Mapping]] = ..., threshold: _Optional[float] = ..., max_tags: _Optional[int] = ..., vocabulary: _Optional[_Iterable[str]] = ..., ocr: _Optional[_Union[_common_pb2.OcrMode, str]] = ...) -> None: ...

class TagResponse(_message.Message):
    __slots__ = ("tags", "caption", "model", "context", "timings", "ocr")
    TAGS_FIELD_NUMBER: _ClassVar[int]
    CAPTION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    OCR_FIELD_NUMBER: _ClassVar[int]
    tags: _containers.RepeatedCompositeFieldContainer[_common_pb2.Tag]
    caption: str
    model: _common_pb2.ModelIdentity
    context: _common_pb2.ImageContext
    timings: _common_pb2.ServiceTimings
    ocr: _common_pb2.OcrResult
    def __init__(self, tags: _Optional[_Iterable[_Union[_common_pb2.Tag, _Mapping]]] = ..., caption: _Optional[str] = ..., model: _Optional[_Union[_common_pb2.ModelIdentity, _Mapping]] = ..., context: _Optional[_Union[_common_pb2.ImageContext, _Mapping]] = ..., timings: _Optional[_Union[_common_pb2.ServiceTimings, _Mapping]] = ..., ocr: _Optional[_Union[_common_pb2.OcrResult, _Mapping]] = ...) -> None: ...

class TaggerServiceGetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TaggerServiceGetModelInfoResponse(_message.Message):
    __slots__ = ("model", "state", "vocabulary_size", "settings")
    class SettingsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    VOCABULARY_SIZE_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelIdentity
    state: _common_pb2.ServiceState
    vocabulary_size: int
    settings: _containers.ScalarMap[str, str]
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelIdentity, _Mapping]] = ..., state: _Optional[_Union[_common_pb2.ServiceState, _Mapping]] = ..., vocabulary_size: _Optional[int] = ..., settings: _Optional[_Mapping[str, str]] = ...) -> None: ...
