"""`archivetag tag` keys its store on the models, so it waits until the orchestrator knows them."""

from archivetag.bulk import identities_known
from archivetag.v1 import common_pb2, tagging_pb2

SERVING, UNREACHABLE, UNKNOWN, DISABLED = (
    tagging_pb2.BACKEND_HEALTH_SERVING, tagging_pb2.BACKEND_HEALTH_UNREACHABLE, tagging_pb2.BACKEND_HEALTH_UNSPECIFIED,
    tagging_pb2.BACKEND_HEALTH_DISABLED)


def status(*backends: tuple[int, str]) -> tagging_pb2.GetStatusResponse:
    return tagging_pb2.GetStatusResponse(backends=[
        tagging_pb2.BackendStatus(name=f"b{i}", health=health, model=common_pb2.ModelIdentity(family=f"b{i}", name=name))
        for i, (health, name) in enumerate(backends)])


def test_a_serving_backend_whose_identity_is_not_known_yet_is_waited_for():
    assert not identities_known(status((SERVING, "archivetag/florence-smoke"), (SERVING, "")))


def test_a_backend_whose_health_is_not_decided_yet_is_waited_for():
    assert not identities_known(status((SERVING, "archivetag/florence-smoke"), (UNKNOWN, "")))


def test_a_backend_the_orchestrator_has_not_reached_yet_is_waited_for():
    # Just after `up`: the service serves, the orchestrator's reconnect has not reached it yet.
    assert not identities_known(status((SERVING, "archivetag/florence-smoke"), (UNREACHABLE, "")))


def test_serving_backends_with_identities_and_disabled_ones_are_settled():
    assert identities_known(status((SERVING, "archivetag/florence-smoke"), (SERVING, "archivetag/rampp-smoke")))
    assert identities_known(status((SERVING, "archivetag/siglip-smoke"), (DISABLED, "")))
