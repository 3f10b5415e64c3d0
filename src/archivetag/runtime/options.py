"""The options every server shares, and those every model service shares."""

from __future__ import annotations

from archivetag.runtime.settings import Option, OptionGroup, parse_bool, parse_list, parse_path
from archivetag.runtime.specs import ServerSpec

# A string: argparse expands it through parse_path, and the docs show it as written.
DEFAULT_MODELS_DIR = "~/.cache/archivetag/models"

MODELS_OPTION = Option(
    "models", DEFAULT_MODELS_DIR, "Models directory (one folder per model).", parse_path, metavar="DIR"
)

SERVER_OPTIONS = OptionGroup(
    "server",
    (
        Option("host", "127.0.0.1", "Address to listen on; 0.0.0.0 in containers."),
        Option("port", 0, "gRPC port.", int),
        Option("metrics_port", 0, "Prometheus metrics HTTP port; 0 turns metrics off.", int),
        Option(
            "metrics_token_file", None,
            "File holding a token the metrics endpoint then requires ('Authorization: Bearer <token>', what "
            "Prometheus' authorization.credentials_file sends). Without it the endpoint is open to whoever reaches "
            "the port, and the orchestrator on a network address names its clients there by pseudonym.",
            parse_path, metavar="FILE",
        ),
        Option(
            "max_image_bytes", 32 * 1024 * 1024,
            "Largest encoded image accepted, in bytes; a larger one is INVALID_ARGUMENT (IMAGE_TOO_LARGE). "
            "The gRPC message limit is this plus 4 MiB, so the image limit is always the one a client meets.",
            int,
        ),
        Option(
            "max_concurrent_rpcs", 256,
            "Calls handled at once (health checks and streams not counted); more are refused with "
            "RESOURCE_EXHAUSTED.", int,
        ),
        Option(
            "max_streams_per_peer", 64,
            "Streams (health watches, reflection, TagImages) one client address may hold open; more are "
            "refused with RESOURCE_EXHAUSTED.", int,
        ),
        Option("grace_seconds", 30.0, "On SIGTERM, how long in-flight calls may take to finish.", float),
        Option("keepalive_seconds", 30.0, "Ping idle client connections this often.", float),
        Option("keepalive_timeout_seconds", 10.0, "Drop a connection whose ping is not answered in this time.", float),
        Option(
            "max_connection_age_seconds", 0.0,
            "Close client connections after this age so clients re-resolve DNS and see new replicas; 0: never.",
            float,
        ),
        Option("tls_cert", None, "PEM certificate chain; with --tls-key serves TLS.", parse_path, metavar="FILE"),
        Option("tls_key", None, "PEM private key for --tls-cert.", parse_path, metavar="FILE"),
        Option(
            "tls_client_ca", None, "PEM CA bundle; when set, clients must present a certificate it signed.",
            parse_path, metavar="FILE",
        ),
        Option(
            "allowed_roots", [],
            "Comma-separated folders the server may read images from when a request names a path "
            "(Image.uri); empty: only image bytes are accepted.",
            parse_list,
        ),
        Option("log_level", "info", "Log level.", choices=("debug", "info", "warning", "error")),
        Option("log_format", "json", "Log line format: one JSON object per line, or plain text.",
               choices=("json", "text")),
    ),
)

MODEL_SERVICE_OPTIONS = OptionGroup(
    "model service",
    (
        MODELS_OPTION,
        Option("device", "auto", "Device: auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps."),
        Option(
            "dtype", "auto",
            "Compute type: auto (float16/bfloat16 on GPU; on a CPU each model's measured choice, int8 or bfloat16 "
            "for the torch taggers, float32 for the rest) or one of the choices. int8: linear layers with int8 "
            "weights (dynamic quantisation), CPU only, about 2-3x faster there; its agreement with float32 is in "
            "docs/models/cpu.md.",
            choices=("auto", "float32", "float16", "bfloat16", "int8"),
        ),
        Option("torch_threads", 0, "CPU threads for inference; 0: the library's default.", int),
        Option("max_batch_size", 0, "Largest batch formed from concurrent requests. 0: by device, 8 on a GPU, 1 on "
               "a CPU (where a batch costs about its size in single images, so batching buys little and a photo "
               "arriving mid-batch would wait for the whole batch).", int),
        Option("max_queue_delay_ms", 0.0, "How long the first request of a batch waits for others. 0: an idle model "
               "starts at once and what arrives while a batch runs forms the next batch (continuous batching).", float),
        Option(
            "max_queue_size", 64,
            "Requests waiting for inference; more are refused with RESOURCE_EXHAUSTED.", int,
        ),
        Option(
            "stall_seconds", 300.0,
            "Turn NOT_SERVING when work is queued and no batch finished for this long.", float,
        ),
        Option("max_failed_batches", 3, "Turn NOT_SERVING after this many batches failed in a row.", int),
        Option(
            "recovery_probe_seconds", 15.0,
            "While NOT_SERVING after failures, retry the warm-up inference this often.", float,
        ),
        Option("decode_threads", 2, "Threads decoding images (off the event loop).", int),
        Option("max_image_pixels", 100_000_000, "Largest image accepted, in pixels (decompression bombs).", int),
        Option(
            "decode_memory_mb", 1024,
            "Memory all image decodes may hold at once, in MiB (each decode's peak is estimated from the header "
            "first); decodes wait their turn, and an image that alone needs more is refused.", int,
        ),
        Option(
            "max_jpeg_scans", 100,
            "Most scans a JPEG may have (a camera's progressive JPEG has about 10; each scan costs a pass "
            "over the whole image).", int,
        ),
        Option(
            "jpeg_draft", True,
            "Decode large JPEGs at a reduced scale (still at least the model's input size): much faster.",
            parse_bool,
        ),
    ),
)


def server_options(spec: ServerSpec) -> OptionGroup:
    """The server options with this server's own default ports."""
    return SERVER_OPTIONS.with_defaults(port=spec.port, metrics_port=spec.metrics_port)
