"""What a server declares about itself: the types of the one declaration each model folder holds.

A model service is `services/<model>/archivetag_<model>/spec.py` holding one `ServerSpec` (its name,
capability, ports, options, how its files are pulled, how a smoke model is built, its commands,
its deployment needs) and a backend class named there. The registry (runtime/registry.py) finds
the specs through the `archivetag.servers` entry points; everything that lists models (the CLI,
`up`, the orchestrator, `models`, the generated deployment files) reads them from it.

A capability is what a kind of model answers: the gRPC service it implements (also its health
name), the servicer the runtime serves it with, the stub the orchestrator calls it through, and
the orchestrator's default deadline for it. Nothing here imports torch or model code: a spec
names its heavy modules as "module:attribute" strings, imported only when used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from archivetag.runtime.settings import OptionGroup
from archivetag.v1 import tagger_pb2, tagger_pb2_grpc, tagging_pb2, view_type_pb2, view_type_pb2_grpc


def load(reference: str) -> Any:
    """The object a "package.module:attribute" reference names, imported now."""
    module, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True)
class Capability:
    """A kind of answer a model service gives, and everything generic code needs to serve and call it."""

    name: str  # "tagger", "view type"
    service: str  # the full gRPC service name: also the health name SERVING once the model is ready
    servicer: str  # "module:Class" of the runtime's servicer for it (runtime/servicers.py)
    add_servicer: Callable[[Any, Any], None]  # the generated add_XServicer_to_server
    stub: Callable[[Any], Any]  # the generated stub class
    info_request: Callable[[], Any]  # GetModelInfo's request message class
    deadline_seconds: float  # the orchestrator's default wait before it gives up on the backend
    on_deadline: str  # what the orchestrator does then, for people ("failing over")


TAGGER = Capability(
    "tagger", tagger_pb2.DESCRIPTOR.services_by_name["TaggerService"].full_name,
    "archivetag.runtime.servicers:TaggerServicer", tagger_pb2_grpc.add_TaggerServiceServicer_to_server,
    tagger_pb2_grpc.TaggerServiceStub, tagger_pb2.TaggerServiceGetModelInfoRequest,
    deadline_seconds=30.0, on_deadline="failing over to the next tagger",
)
VIEW_TYPE = Capability(
    "view type", view_type_pb2.DESCRIPTOR.services_by_name["ViewTypeService"].full_name,
    "archivetag.runtime.servicers:ViewTypeServicer", view_type_pb2_grpc.add_ViewTypeServiceServicer_to_server,
    view_type_pb2_grpc.ViewTypeServiceStub, view_type_pb2.ViewTypeServiceGetModelInfoRequest,
    deadline_seconds=10.0, on_deadline="answering degraded (view type unknown)",
)
CAPABILITIES = (TAGGER, VIEW_TYPE)
TAGGER_SERVICE = TAGGER.service
VIEW_TYPE_SERVICE = VIEW_TYPE.service
TAGGING_SERVICE = tagging_pb2.DESCRIPTOR.services_by_name["TaggingService"].full_name  # the orchestrator's


@dataclass(frozen=True)
class PullSource:
    """Where `models pull` finds a model's real files, and how it makes them a model folder."""

    repo: Callable[[Any], str]  # the hub repository, from the pull's parsed options
    patterns: tuple[str, ...]  # the files the service loads (allow patterns)
    required: tuple[str, ...]  # patterns that must match at least one file
    build: str  # "module:function(plan, build_folder, tag_data)" making the model folder from the download
    pinned: dict[str, str] = field(default_factory=dict)  # repo -> the commit pulled unless --revision
    converted: bool = False  # the build writes a converted copy of the weights (needs their size again)
    needs_tag_data: bool = False  # the build copies the RAM++ tag list and thresholds
    options: tuple[OptionGroup, ...] = ()  # `models pull` options of this model (e.g. which variant)


@dataclass(frozen=True)
class Deployment:
    """What the generated compose and Kubernetes files give the service."""

    start_seconds: int = 300  # longest a start may take (loading the model) before the service counts as failed
    memory_request: str = "2Gi"
    memory_limit: str = "4Gi"
    gpu: bool = True  # the GPU compose file and the CUDA image give it the GPU


@dataclass(frozen=True)
class ServerSpec:
    """One server: a model service (capability set) or the orchestrator (capability None)."""

    name: str  # `archivetag serve <name>`, <models>/<name>, the metrics label, the image and k8s name
    title: str  # for people: "Florence-2"
    capability: Capability | None
    port: int  # default gRPC port
    metrics_port: int  # default Prometheus port
    app: str  # "module:function(settings)": the backend (model service) or the ServerApp (orchestrator)
    # The server's own settings, or "module:function()" returning them when they depend on the registry.
    options: tuple[OptionGroup, ...] | str = ()
    distribution: str = ""  # the Python distribution that holds it (pip install NAME; the image's package)
    needs_torch: bool = False  # its serving path imports torch (the control plane never does)
    priority: int = 100  # taggers: the orchestrator's default order, lowest first (primary, then fallbacks)
    smoke: str | None = None  # "module:function(folder, tag_list=, thresholds=)" writing a small random model
    commands: str | None = None  # "module:function(subparsers)" adding its `archivetag models` commands
    pull: PullSource | None = None
    deployment: Deployment = Deployment()
    extras: tuple[str, ...] = ()  # extras of its distribution the tools image installs (the exporter)

    def option_groups(self) -> tuple[OptionGroup, ...]:
        return load(self.options)() if isinstance(self.options, str) else self.options

    @property
    def is_model(self) -> bool:
        return self.capability is not None

    @property
    def health_service(self) -> str:
        return self.capability.service if self.capability else TAGGING_SERVICE

    @property
    def role(self) -> str:
        return self.capability.name if self.capability else "orchestrator"

    def stub(self, channel) -> Any:
        """A client stub for the model service's own API."""
        if self.capability is None:
            raise ValueError(f"{self.name} is not a model service")
        return self.capability.stub(channel)

    def model_info_request(self) -> Any:
        if self.capability is None:
            raise ValueError(f"{self.name} is not a model service")
        return self.capability.info_request()
