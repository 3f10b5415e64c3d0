"""The orchestrator: the one declaration of this server (runtime/specs.py)."""

from archivetag.runtime.specs import ServerSpec

SPEC = ServerSpec(
    name="orchestrator",
    title="orchestrator",
    capability=None,
    port=50051,
    metrics_port=9151,
    app="archivetag_orchestrator.app:create_app",
    options="archivetag_orchestrator.options:option_groups",
    distribution="archivetag-orchestrator",
)
