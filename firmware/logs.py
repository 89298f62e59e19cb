"""Log lines as one JSON object each, for the service's journal (systemd) and the simulators.

A record's structured facts go in `extra={"fields": {...}}`; callers never put a key, PIN, activation key or
sale body there.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created)),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):  # a field named as the line's own keys is kept, prefixed
            line.update({(f"field_{key}" if key in line else key): value for key, value in fields.items()})
        if record.exc_info:
            if "error" in line:
                line["field_error"] = line.pop("error")
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def json_logging(level: str = "INFO", stream: TextIO | None = None) -> None:
    """Every logger's records as JSON lines on `stream` (standard output by default)."""
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonLines())
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler], force=True)
