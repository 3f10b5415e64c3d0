import datetime

from archivetag.v1 import common_pb2 as _common_pb2
from archivetag.v1 import errors_pb2 as _errors_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from archivetag.v1 import view_type_pb2 as _view_type_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class OverflowPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OVERFLOW_POLICY_UNSPECIFIED: _ClassVar[OverflowPolicy]
    OVERFLOW_POLICY_WAIT: _ClassVar[OverflowPolicy]
    OVERFLOW_POLICY_FALLBACK: _ClassVar[OverflowPolicy]

class FallbackReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FALLBACK_REASON_UNSPECIFIED: _ClassVar[FallbackReason]
    FALLBACK_REASON_DISABLED: _ClassVar[FallbackReason]
    FALLBACK_REASON_NOT_SERVING: _ClassVar[FallbackReason]
    FALLBACK_REASON_UNREACHABLE: _ClassVar[FallbackReason]
    FALLBACK_REASON_HEALTH_UNKNOWN: _ClassVar[FallbackReason]
    FALLBACK_REASON_BREAKER_OPEN: _ClassVar[FallbackReason]
    FALLBACK_REASON_DEADLINE_EXCEEDED: _ClassVar[FallbackReason]
    FALLBACK_REASON_OVERLOADED: _ClassVar[FallbackReason]
    FALLBACK_REASON_CALL_FAILED: _ClassVar[FallbackReason]
    FALLBACK_REASON_NO_TIME_LEFT: _ClassVar[FallbackReason]

class BackendHealth(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BACKEND_HEALTH_UNSPECIFIED: _ClassVar[BackendHealth]
    BACKEND_HEALTH_SERVING: _ClassVar[BackendHealth]
    BACKEND_HEALTH_NOT_SERVING: _ClassVar[BackendHealth]
    BACKEND_HEALTH_UNREACHABLE: _ClassVar[BackendHealth]
    BACKEND_HEALTH_DISABLED: _ClassVar[BackendHealth]

class BreakerState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BREAKER_STATE_UNSPECIFIED: _ClassVar[BreakerState]
    BREAKER_STATE_CLOSED: _ClassVar[BreakerState]
    BREAKER_STATE_OPEN: _ClassVar[BreakerState]
    BREAKER_STATE_HALF_OPEN: _ClassVar[BreakerState]
OVERFLOW_POLICY_UNSPECIFIED: OverflowPolicy
OVERFLOW_POLICY_WAIT: OverflowPolicy
OVERFLOW_POLICY_FALLBACK: OverflowPolicy
FALLBACK_REASON_UNSPECIFIED: FallbackReason
FALLBACK_REASON_DISABLED: FallbackReason
FALLBACK_REASON_NOT_SERVING: FallbackReason
FALLBACK_REASON_UNREACHABLE: FallbackReason
FALLBACK_REASON_HEALTH_UNKNOWN: FallbackReason
FALLBACK_REASON_BREAKER_OPEN: FallbackReason
FALLBACK_REASON_DEADLINE_EXCEEDED: FallbackReason
FALLBACK_REASON_OVERLOADED: FallbackReason
FALLBACK_REASON_CALL_FAILED: FallbackReason
FALLBACK_REASON_NO_TIME_LEFT: FallbackReason
BACKEND_HEALTH_UNSPECIFIED: BackendHealth
BACKEND_HEALTH_SERVING: BackendHealth
BACKEND_HEALTH_NOT_SERVING: BackendHealth
BACKEND_HEALTH_UNREACHABLE: BackendHealth
BACKEND_HEALTH_DISABLED: BackendHealth
BREAKER_STATE_UNSPECIFIED: BreakerState
BREAKER_STATE_CLOSED: BreakerState
BREAKER_STATE_OPEN: BreakerState
BREAKER_STATE_HALF_OPEN: BreakerState

class TagImageRequest(_message.Message):
    __slots__ = ("image", "context", "max_tags", "threshold", "include_embedding", "ocr", "bypass_cache", "overflow", "labels")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    MAX_TAGS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    OCR_FIELD_NUMBER: _ClassVar[int]
    BYPASS_CACHE_FIELD_NUMBER: _ClassVar[int]
    OVERFLOW_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    image: _common_pb2.Image
    context: _common_pb2.ImageContext
    max_tags: int
    threshold: float
    include_embedding: bool
    ocr: _common_pb2.OcrMode
    bypass_cache: bool
    overflow: OverflowPolicy
    labels: _view_type_pb2.LabelSet
    def __init__(self, image: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., context: _Optional[_Union[_common_pb2.ImageContext, _Mapping]] = ..., max_tags: _Optional[int] = ..., threshold: _Optional[float] = ..., include_embedding: _Optional[bool] = ..., ocr: _Optional[_Union[_common_pb2.OcrMode, str]] = ..., bypass_cache: _Optional[bool] = ..., overflow: _Optional[_Union[OverflowPolicy, str]] = ..., labels: _Optional[_Union[_view_type_pb2.LabelSet, _Mapping]] = ...) -> None: ...

class ViewType(_message.Message):
    __slots__ = ("name", "confidence", "scores")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    name: str
    confidence: float
    scores: _containers.RepeatedCompositeFieldContainer[_view_type_pb2.ClassScore]
    def __init__(self, name: _Optional[str] = ..., confidence: _Optional[float] = ..., scores: _Optional[_Iterable[_Union[_view_type_pb2.ClassScore, _Mapping]]] = ...) -> None: ...

class StageTimings(_message.Message):
    __slots__ = ("total_seconds", "tagger_seconds", "view_type_seconds", "failover_seconds", "admission_seconds", "tagger_wait_seconds")
    TOTAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TAGGER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    VIEW_TYPE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    FAILOVER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ADMISSION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TAGGER_WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    total_seconds: float
    tagger_seconds: float
    view_type_seconds: float
    failover_seconds: float
    admission_seconds: float
    tagger_wait_seconds: float
    def __init__(self, total_seconds: _Optional[float] = ..., tagger_seconds: _Optional[float] = ..., view_type_seconds: _Optional[float] = ..., failover_seconds: _Optional[float] = ..., admission_seconds: _Optional[float] = ..., tagger_wait_seconds: _Optional[float] = ...) -> None: ...

class TagImageResponse(_message.Message):
    __slots__ = ("tags", "caption", "tagger", "fallback_reason", "view_type", "degraded", "degraded_reasons", "models", "timings", "context", "embedding", "fallback", "primary_health", "primary_breaker", "ocr", "cached", "tagged_at", "labels")
    TAGS_FIELD_NUMBER: _ClassVar[int]
    CAPTION_FIELD_NUMBER: _ClassVar[int]
    TAGGER_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_REASON_FIELD_NUMBER: _ClassVar[int]
    VIEW_TYPE_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_REASONS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_HEALTH_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_BREAKER_FIELD_NUMBER: _ClassVar[int]
    OCR_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    TAGGED_AT_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    tags: _containers.RepeatedCompositeFieldContainer[_common_pb2.Tag]
    caption: str
    tagger: str
    fallback_reason: str
    view_type: ViewType
    degraded: bool
    degraded_reasons: _containers.RepeatedScalarFieldContainer[str]
    models: _containers.RepeatedCompositeFieldContainer[_common_pb2.ModelIdentity]
    timings: StageTimings
    context: _common_pb2.ImageContext
    embedding: _containers.RepeatedScalarFieldContainer[float]
    fallback: FallbackReason
    primary_health: BackendHealth
    primary_breaker: BreakerState
    ocr: _common_pb2.OcrResult
    cached: bool
    tagged_at: _timestamp_pb2.Timestamp
    labels: _containers.RepeatedCompositeFieldContainer[_view_type_pb2.LabelScore]
    def __init__(self, tags: _Optional[_Iterable[_Union[_common_pb2.Tag, _Mapping]]] = ..., caption: _Optional[str] = ..., tagger: _Optional[str] = ..., fallback_reason: _Optional[str] = ..., view_type: _Optional[_Union[ViewType, _Mapping]] = ..., degraded: _Optional[bool] = ..., degraded_reasons: _Optional[_Iterable[str]] = ..., models: _Optional[_Iterable[_Union[_common_pb2.ModelIdentity, _Mapping]]] = ..., timings: _Optional[_Union[StageTimings, _Mapping]] = ..., context: _Optional[_Union[_common_pb2.ImageContext, _Mapping]] = ..., embedding: _Optional[_Iterable[float]] = ..., fallback: _Optional[_Union[FallbackReason, str]] = ..., primary_health: _Optional[_Union[BackendHealth, str]] = ..., primary_breaker: _Optional[_Union[BreakerState, str]] = ..., ocr: _Optional[_Union[_common_pb2.OcrResult, _Mapping]] = ..., cached: _Optional[bool] = ..., tagged_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., labels: _Optional[_Iterable[_Union[_view_type_pb2.LabelScore, _Mapping]]] = ...) -> None: ...

class TagImagesRequest(_message.Message):
    __slots__ = ("id", "request")
    ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    id: str
    request: TagImageRequest
    def __init__(self, id: _Optional[str] = ..., request: _Optional[_Union[TagImageRequest, _Mapping]] = ...) -> None: ...

class ItemError(_message.Message):
    __slots__ = ("code", "status", "message", "reason", "metadata", "field")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CODE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    code: int
    status: str
    message: str
    reason: _errors_pb2.ErrorReason
    metadata: _containers.ScalarMap[str, str]
    field: str
    def __init__(self, code: _Optional[int] = ..., status: _Optional[str] = ..., message: _Optional[str] = ..., reason: _Optional[_Union[_errors_pb2.ErrorReason, str]] = ..., metadata: _Optional[_Mapping[str, str]] = ..., field: _Optional[str] = ...) -> None: ...

class TagImagesResponse(_message.Message):
    __slots__ = ("id", "result", "error")
    ID_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    id: str
    result: TagImageResponse
    error: ItemError
    def __init__(self, id: _Optional[str] = ..., result: _Optional[_Union[TagImageResponse, _Mapping]] = ..., error: _Optional[_Union[ItemError, _Mapping]] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class BackendStatus(_message.Message):
    __slots__ = ("name", "role", "target", "health", "breaker", "replicas", "serving_replicas", "latency_p50_seconds", "latency_p95_seconds", "ok_count", "error_count", "last_error", "model", "last_error_time", "last_error_resolved", "calls", "capacity", "waiting")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    BREAKER_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    SERVING_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P50_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P95_SECONDS_FIELD_NUMBER: _ClassVar[int]
    OK_COUNT_FIELD_NUMBER: _ClassVar[int]
    ERROR_COUNT_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_TIME_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_RESOLVED_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    name: str
    role: str
    target: str
    health: BackendHealth
    breaker: BreakerState
    replicas: int
    serving_replicas: int
    latency_p50_seconds: float
    latency_p95_seconds: float
    ok_count: int
    error_count: int
    last_error: str
    model: _common_pb2.ModelIdentity
    last_error_time: _timestamp_pb2.Timestamp
    last_error_resolved: bool
    calls: int
    capacity: int
    waiting: int
    def __init__(self, name: _Optional[str] = ..., role: _Optional[str] = ..., target: _Optional[str] = ..., health: _Optional[_Union[BackendHealth, str]] = ..., breaker: _Optional[_Union[BreakerState, str]] = ..., replicas: _Optional[int] = ..., serving_replicas: _Optional[int] = ..., latency_p50_seconds: _Optional[float] = ..., latency_p95_seconds: _Optional[float] = ..., ok_count: _Optional[int] = ..., error_count: _Optional[int] = ..., last_error: _Optional[str] = ..., model: _Optional[_Union[_common_pb2.ModelIdentity, _Mapping]] = ..., last_error_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_error_resolved: _Optional[bool] = ..., calls: _Optional[int] = ..., capacity: _Optional[int] = ..., waiting: _Optional[int] = ...) -> None: ...

class GetStatusResponse(_message.Message):
    __slots__ = ("backends", "in_flight", "queued", "cache")
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    backends: _containers.RepeatedCompositeFieldContainer[BackendStatus]
    in_flight: int
    queued: int
    cache: CacheStatus
    def __init__(self, backends: _Optional[_Iterable[_Union[BackendStatus, _Mapping]]] = ..., in_flight: _Optional[int] = ..., queued: _Optional[int] = ..., cache: _Optional[_Union[CacheStatus, _Mapping]] = ...) -> None: ...

class CacheStatus(_message.Message):
    __slots__ = ("backend", "entries", "bytes", "hits", "misses", "shared", "evictions", "last_error")
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    MISSES_FIELD_NUMBER: _ClassVar[int]
    SHARED_FIELD_NUMBER: _ClassVar[int]
    EVICTIONS_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    backend: str
    entries: int
    bytes: int
    hits: int
    misses: int
    shared: int
    evictions: int
    last_error: str
    def __init__(self, backend: _Optional[str] = ..., entries: _Optional[int] = ..., bytes: _Optional[int] = ..., hits: _Optional[int] = ..., misses: _Optional[int] = ..., shared: _Optional[int] = ..., evictions: _Optional[int] = ..., last_error: _Optional[str] = ...) -> None: ...

class EmbedTextRequest(_message.Message):
    __slots__ = ("texts",)
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, texts: _Optional[_Iterable[str]] = ...) -> None: ...

class EmbedTextResponse(_message.Message):
    __slots__ = ("embeddings", "model", "logit_scale", "logit_bias")
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LOGIT_SCALE_FIELD_NUMBER: _ClassVar[int]
    LOGIT_BIAS_FIELD_NUMBER: _ClassVar[int]
    embeddings: _containers.RepeatedCompositeFieldContainer[_view_type_pb2.TextEmbedding]
    model: _common_pb2.ModelIdentity
    logit_scale: float
    logit_bias: float
    def __init__(self, embeddings: _Optional[_Iterable[_Union[_view_type_pb2.TextEmbedding, _Mapping]]] = ..., model: _Optional[_Union[_common_pb2.ModelIdentity, _Mapping]] = ..., logit_scale: _Optional[float] = ..., logit_bias: _Optional[float] = ...) -> None: ...
