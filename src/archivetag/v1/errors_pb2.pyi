from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from typing import ClassVar as _ClassVar

DESCRIPTOR: _descriptor.FileDescriptor

class ErrorReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_REASON_UNSPECIFIED: _ClassVar[ErrorReason]
    ERROR_REASON_IMAGE_MISSING: _ClassVar[ErrorReason]
    ERROR_REASON_IMAGE_EMPTY: _ClassVar[ErrorReason]
    ERROR_REASON_IMAGE_TOO_LARGE: _ClassVar[ErrorReason]
    ERROR_REASON_IMAGE_TOO_MANY_PIXELS: _ClassVar[ErrorReason]
    ERROR_REASON_IMAGE_FORMAT_UNSUPPORTED: _ClassVar[ErrorReason]
    ERROR_REASON_IMAGE_CORRUPT: _ClassVar[ErrorReason]
    ERROR_REASON_IMAGE_URI_REFUSED: _ClassVar[ErrorReason]
    ERROR_REASON_FIELD_INVALID: _ClassVar[ErrorReason]
    ERROR_REASON_ITEM_ID_INVALID: _ClassVar[ErrorReason]
    ERROR_REASON_TOKEN_MISSING: _ClassVar[ErrorReason]
    ERROR_REASON_TOKEN_INVALID: _ClassVar[ErrorReason]
    ERROR_REASON_CLIENT_QUEUE_FULL: _ClassVar[ErrorReason]
    ERROR_REASON_INFERENCE_QUEUE_FULL: _ClassVar[ErrorReason]
    ERROR_REASON_ACCELERATOR_OUT_OF_MEMORY: _ClassVar[ErrorReason]
    ERROR_REASON_MODEL_NOT_SERVING: _ClassVar[ErrorReason]
    ERROR_REASON_NO_TAGGER_AVAILABLE: _ClassVar[ErrorReason]
    ERROR_REASON_DEADLINE_PASSED: _ClassVar[ErrorReason]
    ERROR_REASON_INFERENCE_FAILED: _ClassVar[ErrorReason]
ERROR_REASON_UNSPECIFIED: ErrorReason
ERROR_REASON_IMAGE_MISSING: ErrorReason
ERROR_REASON_IMAGE_EMPTY: ErrorReason
ERROR_REASON_IMAGE_TOO_LARGE: ErrorReason
ERROR_REASON_IMAGE_TOO_MANY_PIXELS: ErrorReason
ERROR_REASON_IMAGE_FORMAT_UNSUPPORTED: ErrorReason
ERROR_REASON_IMAGE_CORRUPT: ErrorReason
ERROR_REASON_IMAGE_URI_REFUSED: ErrorReason
ERROR_REASON_FIELD_INVALID: ErrorReason
ERROR_REASON_ITEM_ID_INVALID: ErrorReason
ERROR_REASON_TOKEN_MISSING: ErrorReason
ERROR_REASON_TOKEN_INVALID: ErrorReason
ERROR_REASON_CLIENT_QUEUE_FULL: ErrorReason
ERROR_REASON_INFERENCE_QUEUE_FULL: ErrorReason
ERROR_REASON_ACCELERATOR_OUT_OF_MEMORY: ErrorReason
ERROR_REASON_MODEL_NOT_SERVING: ErrorReason
ERROR_REASON_NO_TAGGER_AVAILABLE: ErrorReason
ERROR_REASON_DEADLINE_PASSED: ErrorReason
ERROR_REASON_INFERENCE_FAILED: ErrorReason
