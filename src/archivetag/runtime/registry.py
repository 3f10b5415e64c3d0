"""The one registry of servers, built from the declarations the installed servers register.

Each server's distribution registers one `ServerSpec` (runtime/specs.py) under the
`archivetag.servers` entry point group:

    [project.entry-points."archivetag.servers"]
    florence = "archivetag_florence.spec:SPEC"

and nothing else names a model: the CLI (`serve`, `models`), `up`, the orchestrator's backends
and options, `models pull`, docs/configuration.md and the generated deployment files read the
specs from here. A fourth model is one folder (its spec, its backend, its pyproject.toml with
that one entry point), installed. An installation holds the servers it installed: the client
alone holds none, a SigLIP container only SigLIP.

Loading reads only the spec modules (no torch, no model code); a server's heavy modules are
named in its spec and imported when that server is actually used.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from archivetag.runtime.specs import (  # noqa: F401 - re-exported: the names callers use
    TAGGER,
    TAGGER_SERVICE,
    TAGGING_SERVICE,
    VIEW_TYPE,
    VIEW_TYPE_SERVICE,
    Capability,
    ServerSpec,
)

ENTRY_POINT_GROUP = "archivetag.servers"
ORCHESTRATOR_NAME = "orchestrator"


class RegistryError(RuntimeError):
    """The installed servers' declarations do not fit together."""


@functools.cache
def servers() -> tuple[ServerSpec, ...]:
    """Every installed server: model services by default port, then the orchestrator."""
    found: dict[str, ServerSpec] = {}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            spec = entry.load()
        except Exception as exc:  # a broken install names itself instead of a bare traceback
            raise RegistryError(f"the installed server {entry.name!r} ({entry.value}, from "
                                f"{entry.dist.name if entry.dist else 'unknown'}) cannot be loaded: "
                                f"{type(exc).__name__}: {exc}; reinstall or uninstall it") from exc
        if not isinstance(spec, ServerSpec) or spec.name != entry.name:
            raise RegistryError(f"entry point {entry.name} = {entry.value} is not a ServerSpec named {entry.name!r}")
        if spec.name in found:
            continue  # the same distribution seen twice on sys.path (an editable install beside a wheel)
        found[spec.name] = spec
    specs = sorted(found.values(), key=lambda s: (not s.is_model, s.port, s.name))
    for attribute in ("port", "metrics_port"):
        values = [getattr(s, attribute) for s in specs]
        clash = {v for v in values if values.count(v) > 1}
        if clash:
            raise RegistryError(f"two servers declare the same default {attribute}: {sorted(clash)}")
    return tuple(specs)


def models() -> tuple[ServerSpec, ...]:
    return tuple(s for s in servers() if s.is_model)


def with_capability(capability: Capability) -> tuple[ServerSpec, ...]:
    """The models of one capability; taggers in their default order (priority, then name)."""
    return tuple(sorted((s for s in models() if s.capability == capability), key=lambda s: (s.priority, s.name)))


def server(name: str) -> ServerSpec:
    for spec in servers():
        if spec.name == name:
            return spec
    known = ", ".join(s.name for s in servers()) or "none (install archivetag-florence, archivetag-orchestrator, ...)"
    raise KeyError(f"no server named {name!r} is installed; installed: {known}")


def orchestrator() -> ServerSpec:
    return server(ORCHESTRATOR_NAME)


# The tables as module attributes, computed when first read (PEP 562), so importing this module
# costs nothing and reads no entry point.
_TABLES: dict[str, Callable[[], Any]] = {
    "SERVERS": servers,
    "MODELS": models,
    "SERVER_NAMES": lambda: tuple(s.name for s in servers()),
    "MODEL_NAMES": lambda: tuple(s.name for s in models()),
    "TAGGER_NAMES": lambda: tuple(s.name for s in with_capability(TAGGER)),
    "ORCHESTRATOR": orchestrator,
}


def __getattr__(name: str) -> Any:
    if name in _TABLES:
        return _TABLES[name]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
