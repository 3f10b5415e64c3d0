"""The one registry of servers: every model service and the orchestrator, in one table.

Everything that lists models reads it: the CLI (`serve`, `models`), `up`, the orchestrator's
backends and options, `models pull`, the docs and the deployment checks. Adding a fourth model
means one folder under services/ (backend, options, smoke model, commands) and one entry here.

This module imports only the generated protobuf code: no torch, no model code. A service's
Python modules are named here and imported only when that service is actually used.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from archivetag.v1 import tagger_pb2, tagger_pb2_grpc, tagging_pb2, view_type_pb2, view_type_pb2_grpc

TAGGER_SERVICE = tagger_pb2.DESCRIPTOR.services_by_name["TaggerService"].full_name
VIEW_TYPE_SERVICE = view_type_pb2.DESCRIPTOR.services_by_name["ViewTypeService"].full_name
TAGGING_SERVICE = tagging_pb2.DESCRIPTOR.services_by_name["TaggingService"].full_name

TAGGER = "tagger"
VIEW_TYPE = "view type"
ORCHESTRATOR_ROLE = "orchestrator"


@dataclass(frozen=True)
class ServerSpec:
    """One server: its name on the command line, what it does, where it listens."""

    name: str  # `archivetag serve <name>`, the models sub-folder, the metrics label
    title: str  # for people: "Florence-2"
    role: str  # TAGGER, VIEW_TYPE or ORCHESTRATOR_ROLE
    port: int  # default gRPC port
    metrics_port: int  # default Prometheus port
    health_service: str  # the health name that is SERVING once the model is ready
    package: str  # the Python package holding the server's modules
    needs_torch: bool = False  # its backend imports torch (the control plane never does)

    @property
    def is_model(self) -> bool:
        return self.role != ORCHESTRATOR_ROLE

    def module(self, name: str) -> ModuleType:
        """One of the service's modules ("backend", "options", "smoke", "commands"), imported now."""
        return importlib.import_module(f"{self.package}.{name}")

    def stub(self, channel) -> Any:
        """A client stub for the service's own API (TaggerService or ViewTypeService)."""
        if self.health_service == TAGGER_SERVICE:
            return tagger_pb2_grpc.TaggerServiceStub(channel)
        if self.health_service == VIEW_TYPE_SERVICE:
            return view_type_pb2_grpc.ViewTypeServiceStub(channel)
        raise ValueError(f"{self.name} has no model-service stub")

    def model_info_request(self) -> Any:
        if self.health_service == TAGGER_SERVICE:
            return tagger_pb2.TaggerServiceGetModelInfoRequest()
        if self.health_service == VIEW_TYPE_SERVICE:
            return view_type_pb2.ViewTypeServiceGetModelInfoRequest()
        raise ValueError(f"{self.name} has no GetModelInfo")


MODELS: tuple[ServerSpec, ...] = (
    ServerSpec("florence", "Florence-2", TAGGER, 50052, 9152, TAGGER_SERVICE,
               "archivetag.services.florence", needs_torch=True),
    ServerSpec("rampp", "RAM++", TAGGER, 50053, 9153, TAGGER_SERVICE,
               "archivetag.services.rampp", needs_torch=True),
    ServerSpec("siglip", "SigLIP", VIEW_TYPE, 50054, 9154, VIEW_TYPE_SERVICE,
               "archivetag.services.siglip"),
)
ORCHESTRATOR = ServerSpec("orchestrator", "orchestrator", ORCHESTRATOR_ROLE, 50051, 9151, TAGGING_SERVICE,
                          "archivetag.orchestrator")
SERVERS: tuple[ServerSpec, ...] = (*MODELS, ORCHESTRATOR)

MODEL_NAMES: tuple[str, ...] = tuple(spec.name for spec in MODELS)
TAGGER_NAMES: tuple[str, ...] = tuple(spec.name for spec in MODELS if spec.role == TAGGER)
SERVER_NAMES: tuple[str, ...] = tuple(spec.name for spec in SERVERS)


def server(name: str) -> ServerSpec:
    for spec in SERVERS:
        if spec.name == name:
            return spec
    raise KeyError(f"no server named {name!r}; known: {', '.join(SERVER_NAMES)}")


def view_type_model() -> ServerSpec:
    """The one model that answers the view type."""
    (spec,) = [s for s in MODELS if s.role == VIEW_TYPE]
    return spec
