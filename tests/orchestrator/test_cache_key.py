"""The result cache's key: every TagImageRequest field but the image, the context, the opt-out and the
overflow policy changes it, including fields added to the contract later (the loop reads the descriptor)."""

from __future__ import annotations

import pytest
from google.protobuf.descriptor import FieldDescriptor

from archivetag_orchestrator.cache import NOT_IN_KEY, identity_bytes, options_bytes
from archivetag.v1 import common_pb2, tagging_pb2

ANSWER_FIELDS = [f for f in tagging_pb2.TagImageRequest.DESCRIPTOR.fields if f.name not in NOT_IN_KEY]


def set_non_default(message, field: FieldDescriptor) -> None:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        target = getattr(message, field.name)
        item = target.add() if field.is_repeated else target
        item.SetInParent()
        if item.DESCRIPTOR.fields:
            set_non_default(item, item.DESCRIPTOR.fields[0])
        return
    value = {FieldDescriptor.TYPE_BOOL: True, FieldDescriptor.TYPE_STRING: "x", FieldDescriptor.TYPE_BYTES: b"x",
             FieldDescriptor.TYPE_FLOAT: 0.5, FieldDescriptor.TYPE_DOUBLE: 0.5}.get(field.type, 1)
    if field.is_repeated:
        getattr(message, field.name).append(value)
    else:
        setattr(message, field.name, value)


def request(**fields) -> tagging_pb2.TagImageRequest:
    r = tagging_pb2.TagImageRequest(**fields)
    r.image.data = b"photo"
    return r


@pytest.mark.parametrize("field", ANSWER_FIELDS, ids=lambda f: f.name)
def test_each_answer_changing_field_changes_the_key(field):
    changed = request()
    set_non_default(changed, field)
    assert options_bytes(changed) != options_bytes(request())


def test_image_context_opt_out_and_overflow_policy_leave_the_key_alone():
    other = request(bypass_cache=True, context=common_pb2.ImageContext(region="Wallonia"),
                    overflow=tagging_pb2.OVERFLOW_POLICY_FALLBACK)
    other.image.uri = "/elsewhere.jpg"
    assert options_bytes(other) == options_bytes(request())


def test_an_explicit_zero_threshold_is_another_answer_than_the_default():
    assert options_bytes(request(threshold=0.0)) != options_bytes(request())


def test_the_device_is_not_part_of_a_models_identity_but_the_dtype_is():
    model = common_pb2.ModelIdentity(family="florence", name="m", revision="r", weights_sha256="ab", dtype="float16")
    on_other_card = common_pb2.ModelIdentity()
    on_other_card.CopyFrom(model)
    on_other_card.device = "cuda:1"
    in_other_dtype = common_pb2.ModelIdentity(family="florence", name="m", revision="r", weights_sha256="ab",
                                              dtype="float32")
    assert identity_bytes(on_other_card) == identity_bytes(model)
    assert identity_bytes(in_other_dtype) != identity_bytes(model)
