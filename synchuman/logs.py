"""Structured (one JSON object per line) logging shared by the CLI and every service."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Formats a record as JSON: time, level, logger, message, plus every ``extra=`` field."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                payload[key] = value
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        # dicts and lists stay JSON structures; what JSON cannot hold (paths, numpy scalars) becomes str
        try:
            return json.dumps(payload, ensure_ascii=False, default=str)
        except (TypeError, ValueError):  # e.g. a dict with tuple keys
            flat = {
                k: v if isinstance(v, (str, int, float, bool, type(None))) else str(v)
                for k, v in payload.items()
            }
            return json.dumps(flat, ensure_ascii=False)


def configure_logging(level: str | int = "INFO") -> None:
    """Send JSON lines to stderr at ``level``; idempotent."""
    root = logging.getLogger()
    root.setLevel(level if isinstance(level, int) else level.upper())
    if not any(getattr(h, "_synchuman", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        handler._synchuman = True  # type: ignore[attr-defined]
        root.addHandler(handler)
