from archivetag.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LabelSet(_message.Message):
    __slots__ = ("labels", "template")
    LABELS_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.RepeatedCompositeFieldContainer[Label]
    template: str
    def __init__(self, labels: _Optional[_Iterable[_Union[Label, _Mapping]]] = ..., template: _Optional[str] = ...) -> None: ...

class Label(_message.Message):
    __slots__ = ("name", "prompts")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    prompts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., prompts: _Optional[_Iterable[str]] = ...) -> None: ...

class LabelScore(_message.Message):
    __slots__ = ("name", "probability", "logit")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    LOGIT_FIELD_NUMBER: _ClassVar[int]
    name: str
    probability: float
    logit: float
    def __init__(self, name: _Optional[str] = ..., probability: _Optional[float] = ..., logit: _Optional[float] = ...) -> None: ...

class TextEmbedding(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class ClassifyRequest(_message.Message):
    __slots__ = ("image", "include_embedding", "labels")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    image: _common_pb2.Image
    include_embedding: bool
    labels: LabelSet
    def __init__(self, image: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., include_embedding: _Optional[bool] = ..., labels: _Optional[_Union[LabelSet, _Mapping]] = ...) -> None: ...

class ClassScore(_message.Message):
    __slots__ = ("name", "probability", "logit")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    LOGIT_FIELD_NUMBER: _ClassVar[int]
    name: str
    probability: float
    logit: float
    def __init__(self, name: _Optional[str] = ..., probability: _Optional[float] = ..., logit: _Optional[float] = ...) -> None: ...

class ClassifyResponse(_message.Message):
    __slots__ = ("view_type", "confidence", "scores", "embedding", "model", "timings", "labels")
    VIEW_TYPE_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    view_type: str
    confidence: float
    scores: _containers.RepeatedCompositeFieldContainer[ClassScore]
    embedding: _containers.RepeatedScalarFieldContainer[float]
    model: _common_pb2.ModelIdentity
    timings: _common_pb2.ServiceTimings
    labels: _containers.RepeatedCompositeFieldContainer[LabelScore]
    def __init__(self, view_type: _Optional[str] = ..., confidence: _Optional[float] = ..., scores: _Optional[_Iterable[_Union[ClassScore, _Mapping]]] = ..., embedding: _Optional[_Iterable[float]] = ..., model: _Optional[_Union[_common_pb2.ModelIdentity, _Mapping]] = ..., timings: _Optional[_Union[_common_pb2.ServiceTimings, _Mapping]] = ..., labels: _Optional[_Iterable[_Union[LabelScore, _Mapping]]] = ...) -> None: ...

class ViewTypeServiceGetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ViewTypeServiceGetModelInfoResponse(_message.Message):
    __slots__ = ("model", "state", "classes", "settings")
    class SettingsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelIdentity
    state: _common_pb2.ServiceState
    classes: _containers.RepeatedScalarFieldContainer[str]
    settings: _containers.ScalarMap[str, str]
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelIdentity, _Mapping]] = ..., state: _Optional[_Union[_common_pb2.ServiceState, _Mapping]] = ..., classes: _Optional[_Iterable[str]] = ..., settings: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ViewTypeServiceEmbedTextRequest(_message.Message):
    __slots__ = ("texts",)
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, texts: _Optional[_Iterable[str]] = ...) -> None: ...

class ViewTypeServiceEmbedTextResponse(_message.Message):
    __slots__ = ("embeddings", "model", "logit_scale", "logit_bias", "timings")
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LOGIT_SCALE_FIELD_NUMBER: _ClassVar[int]
    LOGIT_BIAS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    embeddings: _containers.RepeatedCompositeFieldContainer[TextEmbedding]
    model: _common_pb2.ModelIdentity
    logit_scale: float
    logit_bias: float
    timings: _common_pb2.ServiceTimings
    def __init__(self, embeddings: _Optional[_Iterable[_Union[TextEmbedding, _Mapping]]] = ..., model: _Optional[_Union[_common_pb2.ModelIdentity, _Mapping]] = ..., logit_scale: _Optional[float] = ..., logit_bias: _Optional[float] = ..., timings: _Optional[_Union[_common_pb2.ServiceTimings, _Mapping]] = ...) -> None: ...
