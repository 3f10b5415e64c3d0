from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class OcrMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OCR_MODE_UNSPECIFIED: _ClassVar[OcrMode]
    OCR_MODE_TEXT: _ClassVar[OcrMode]
    OCR_MODE_TEXT_WITH_REGIONS: _ClassVar[OcrMode]

class OcrStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OCR_STATUS_UNSPECIFIED: _ClassVar[OcrStatus]
    OCR_STATUS_READ: _ClassVar[OcrStatus]
    OCR_STATUS_NOT_AVAILABLE: _ClassVar[OcrStatus]
OCR_MODE_UNSPECIFIED: OcrMode
OCR_MODE_TEXT: OcrMode
OCR_MODE_TEXT_WITH_REGIONS: OcrMode
OCR_STATUS_UNSPECIFIED: OcrStatus
OCR_STATUS_READ: OcrStatus
OCR_STATUS_NOT_AVAILABLE: OcrStatus

class Image(_message.Message):
    __slots__ = ("data", "uri")
    DATA_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    uri: str
    def __init__(self, data: _Optional[bytes] = ..., uri: _Optional[str] = ...) -> None: ...

class ImageContext(_message.Message):
    __slots__ = ("view_type", "location_type", "region")
    VIEW_TYPE_FIELD_NUMBER: _ClassVar[int]
    LOCATION_TYPE_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    view_type: str
    location_type: str
    region: str
    def __init__(self, view_type: _Optional[str] = ..., location_type: _Optional[str] = ..., region: _Optional[str] = ...) -> None: ...

class Tag(_message.Message):
    __slots__ = ("name", "confidence", "source_model")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_MODEL_FIELD_NUMBER: _ClassVar[int]
    name: str
    confidence: float
    source_model: str
    def __init__(self, name: _Optional[str] = ..., confidence: _Optional[float] = ..., source_model: _Optional[str] = ...) -> None: ...

class ModelIdentity(_message.Message):
    __slots__ = ("family", "name", "revision", "weights_sha256", "device", "dtype", "smoke")
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_SHA256_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SMOKE_FIELD_NUMBER: _ClassVar[int]
    family: str
    name: str
    revision: str
    weights_sha256: str
    device: str
    dtype: str
    smoke: bool
    def __init__(self, family: _Optional[str] = ..., name: _Optional[str] = ..., revision: _Optional[str] = ..., weights_sha256: _Optional[str] = ..., device: _Optional[str] = ..., dtype: _Optional[str] = ..., smoke: _Optional[bool] = ...) -> None: ...

class ServiceState(_message.Message):
    __slots__ = ("serving", "phase", "reason")
    SERVING_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    serving: bool
    phase: str
    reason: str
    def __init__(self, serving: _Optional[bool] = ..., phase: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ServiceTimings(_message.Message):
    __slots__ = ("decode_seconds", "queue_seconds", "inference_seconds", "batch_size")
    DECODE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    decode_seconds: float
    queue_seconds: float
    inference_seconds: float
    batch_size: int
    def __init__(self, decode_seconds: _Optional[float] = ..., queue_seconds: _Optional[float] = ..., inference_seconds: _Optional[float] = ..., batch_size: _Optional[int] = ...) -> None: ...

class OcrRegion(_message.Message):
    __slots__ = ("text", "quad")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    QUAD_FIELD_NUMBER: _ClassVar[int]
    text: str
    quad: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, text: _Optional[str] = ..., quad: _Optional[_Iterable[float]] = ...) -> None: ...

class OcrResult(_message.Message):
    __slots__ = ("status", "text", "regions")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    REGIONS_FIELD_NUMBER: _ClassVar[int]
    status: OcrStatus
    text: str
    regions: _containers.RepeatedCompositeFieldContainer[OcrRegion]
    def __init__(self, status: _Optional[_Union[OcrStatus, str]] = ..., text: _Optional[str] = ..., regions: _Optional[_Iterable[_Union[OcrRegion, _Mapping]]] = ...) -> None: ...
