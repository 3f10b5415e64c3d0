"""Structured logs: one JSON object per line on stderr (or plain text for people).

    log = logging.getLogger("archivetag.rampp")
    log.info("model loaded", extra=fields(seconds=12.3, device="cpu"))
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_FIELDS = "archivetag_fields"


def fields(**values: Any) -> dict[str, Any]:
    """The `extra=` argument that attaches key/value fields to a log line."""
    return {_FIELDS: values}


def _fields_of(record: logging.LogRecord) -> dict[str, Any]:
    """A line's fields, with the trace id of the request it was logged in when tracing is on."""
    values = dict(getattr(record, _FIELDS, {}))
    tracing = sys.modules.get("archivetag.runtime.tracing")  # imported (and on) only in a traced server
    if tracing is not None and tracing.enabled() and (trace_id := tracing.current_trace_id()):
        values["trace_id"] = trace_id
    return values


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        line.update(_fields_of(record))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extra = " ".join(f"{k}={v}" for k, v in _fields_of(record).items())
        text = f"{time.strftime('%H:%M:%S')} {record.levelname.lower():7} {record.name}: {record.getMessage()}"
        text = f"{text} {extra}" if extra else text
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
