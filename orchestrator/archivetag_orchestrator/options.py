"""Settings of the orchestrator (flags and ARCHIVETAG_* variables).

The per-backend options (a target and a deadline for each installed model service) and the
tagger order come from the registry, so they are made when asked for (option_groups), not at
import: the registry imports this server's spec while it is being built.
"""

from archivetag.runtime import registry
from archivetag.runtime.settings import Option, OptionGroup, parse_bool, parse_list, parse_path


def _per_backend_options() -> tuple[Option, ...]:
    """A target and a deadline for every model in the registry; the deadline's default is its capability's."""
    options = []
    for spec in registry.models():
        options.append(Option(
            f"{spec.name}_target", f"127.0.0.1:{spec.port}",
            f"{spec.title} service: host:port (a DNS name resolving to several replicas is balanced "
            "round-robin) or a comma-separated list of replicas.",
        ))
    for spec in registry.models():
        assert spec.capability is not None
        options.append(Option(f"{spec.name}_deadline_seconds", spec.capability.deadline_seconds,
                              f"Longest wait for {spec.title} before {spec.capability.on_deadline}.", float))
    return tuple(options)


def backend_options() -> OptionGroup:
    taggers = [s.name for s in registry.with_capability(registry.TAGGER)]
    return OptionGroup("orchestrator backends", (
        *_per_backend_options(),
        Option("taggers", taggers,
               "Comma-separated taggers in the order they are tried: the first is the primary, the others are "
               "its fallbacks in this order. Default: every installed tagger by its declared priority.", parse_list),
        Option(
            "disabled_backends", [],
            f"Comma-separated backends never called ({', '.join(s.name for s in registry.models())}).", parse_list,
        ),
        *COMMON_BACKEND_OPTIONS,
    ))


COMMON_BACKEND_OPTIONS = (
    Option(
        "fallback_reserve_seconds", 5.0,
        "Time kept from the client's deadline for the fallback tagger when calling the primary.", float,
    ),
    Option(
        "default_deadline_seconds", 120.0,
        "Deadline for an image whose client set none (and for each TagImages item).", float,
    ),
    Option("breaker_failures", 3, "Consecutive failures that open a backend's circuit breaker.", int),
    Option("breaker_cooldown_seconds", 30.0, "How long an open breaker skips its backend before one probe call.",
           float),
    Option("reconnect_max_seconds", 5.0, "Longest pause between reconnects to a backend (health watch, calls).", float),
    Option("resolve_seconds", 30.0, "How often backend DNS names are resolved again to find replicas.", float),
    Option(
        "health_check_seconds", 2.0,
        "How often each replica is also asked Health/Check (beside its Watch stream), to see a hung one.", float,
    ),
    Option(
        "health_check_timeout_seconds", 3.0,
        "A replica whose Health/Check is unanswered this long counts as UNREACHABLE (hung) until it answers.",
        float,
    ),
    Option(
        "overflow", "wait",
        "When the primary tagger is busy (every call it can start on now is taken): 'wait' for it in the "
        "orchestrator's queue while it is healthy and the deadline allows (every photo gets the primary's answer), "
        "or 'fallback' to the next tagger at once (throughput first). A request's own `overflow` field, then "
        "--client-overflow, come first.", choices=("wait", "fallback"),
    ),
    Option(
        "client_overflow", [],
        "Comma-separated 'client-name:wait|fallback' overflow policies per client (see --overflow).", parse_list,
    ),
    Option(
        "first_health_wait_seconds", 10.0,
        "A request that arrives before a backend's first health answer (just after the orchestrator starts) "
        "waits this long at most for it, within its deadline, instead of failing over at once.", float,
    ),
)

CLIENT_OPTIONS = OptionGroup(
    "orchestrator clients",
    (
        Option("auth", True, "Require 'authorization: Bearer <token>' on TaggingService calls.", parse_bool),
        Option(
            "api_tokens_file", None,
            "File of client tokens, one 'client-name:token' per line ('#' comments); tokens of at least 16 characters.",
            parse_path, metavar="FILE",
        ),
        Option(
            "api_tokens", [],
            "Comma-separated 'client-name:token' pairs (in addition to the file); tokens of at least 16 characters.",
            parse_list,
        ),
        Option(
            "max_in_flight", 16,
            "Images processed at once over all clients: the window each backend sees (about one batch running and "
            "the next one decoding), so the fair scheduler, not a queue inside a backend, orders the rest.", int,
        ),
        Option("client_max_in_flight", 8, "Images one client may have processed at once (times its weight).", int),
        Option(
            "interactive_reserve", 4,
            "Slots beyond --max-in-flight for interactive images (TagImage), so a person's photo reaches a busy "
            "backend at once and goes first in its next batch.", int,
        ),
        Option(
            "client_weights", [],
            "Comma-separated 'client-name:weight' shares of the backends (default weight 1): a client of weight 2 "
            "gets about twice the freed slots of a client of weight 1 when both wait.", parse_list,
        ),
        Option(
            "client_max_queued", 1000,
            "Images one client may have waiting; more are refused with RESOURCE_EXHAUSTED.", int,
        ),
        Option(
            "max_mb_in_flight", 256,
            "MiB of images held at once (waiting or in flight) over all clients; more are refused "
            "with RESOURCE_EXHAUSTED (TagImages streams wait instead).", int,
        ),
        Option("client_max_mb_in_flight", 64, "MiB of images one client may have held at once (as --max-mb-in-flight).",
               int),
        Option("stream_window", 16, "TagImages items read ahead and in flight per stream (flow control).", int),
    ),
)

CACHE_OPTIONS = OptionGroup(
    "orchestrator result cache",
    (
        Option(
            "cache", "sqlite",
            "Where answers are kept for identical requests (same image bytes, options and models): 'sqlite' (a file "
            "on this box), 'redis' (shared by several orchestrator replicas) or 'off'. See docs/cache.md.",
            choices=("sqlite", "redis", "off"),
        ),
        Option(
            "cache_scope", "client",
            "Whose answers a client may be answered with: 'client', its own only (the default: no client learns "
            "from the cache that another sent the same photo), or 'shared' between every client (more hits; "
            "a client then learns that the photo was tagged before, though not by whom or when). See docs/cache.md.",
            choices=("client", "shared"),
        ),
        Option("cache_path", "~/.cache/archivetag/result-cache.sqlite", "The SQLite cache file (--cache sqlite).",
               parse_path, metavar="FILE"),
        Option(
            "cache_max_mb", 512,
            "MiB of answers the SQLite cache keeps; the least recently hit are evicted beyond it. With Redis the "
            "server's maxmemory and allkeys-lru policy bound it (deploy/ sets them).", float,
        ),
        Option("cache_redis_url", "redis://127.0.0.1:6379/0", "The Redis server (--cache redis), as redis://host:port/db.",
               metavar="URL"),
        Option(
            "cache_ttl_seconds", 30 * 24 * 3600,
            "Redis: an answer not hit for this long expires (each hit renews it).", int,
        ),
    ),
)



def option_groups() -> tuple[OptionGroup, ...]:
    return (backend_options(), CLIENT_OPTIONS, CACHE_OPTIONS)
