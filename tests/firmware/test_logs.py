"""The service's JSON log lines: a record's fields are top-level keys, none lost."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable

from firmware.fdms_client import _log_call
from firmware.logs import JsonLines


def lines_of(emit: logging.Logger, work: Callable[[], None]) -> list[dict[str, object]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLines())
    emit.addHandler(handler)
    level, emit.level = emit.level, logging.INFO
    try:
        work()
    finally:
        emit.removeHandler(handler)
        emit.level = level
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_fields_named_as_the_lines_own_keys_are_kept_prefixed() -> None:
    log = logging.getLogger("fiscalbox.test.logs")
    fields = {"message": "FDMS said no", "time": "then", "level": "high", "error": "E1", "code": "X"}
    [line] = lines_of(log, lambda: log.warning("said", extra={"fields": fields}))
    assert line["message"] == "said" and line["level"] == "WARNING" and line["code"] == "X"
    assert [line[f"field_{key}"] for key in ("message", "time", "level")] == ["FDMS said no", "then", "high"]
    assert line["error"] == "E1"  # no traceback: the field keeps its own name


def test_an_fdms_call_is_one_line_with_its_facts_as_keys_not_text_in_the_message() -> None:
    log = logging.getLogger("firmware.fdms_client")
    [line] = lines_of(log, lambda: _log_call("GetStatus", 200, 0.0))
    assert line["message"] == "fdms_call" and (line["endpoint"], line["status"]) == ("GetStatus", 200)
    assert isinstance(line["ms"], int)
