"""Logging of `detector run`: one JSON object per line (time, level, logger, message,
and the ids a record carries, such as request_id or alert_id) for log shippers, or
plain text for a terminal (`DETECTOR_LOG_FORMAT=text`)."""

from __future__ import annotations

import logging
import os
import traceback
from datetime import UTC, datetime
from typing import Any

import orjson

FORMAT_ENV = "DETECTOR_LOG_FORMAT"
FORMATS = ("json", "text")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Attributes a record carries when the call site passes them in `extra=`: the ids an
# operator searches for. Anything else in `extra` is left out of the line.
ID_FIELDS = ("request_id", "alert_id", "revision", "entity", "endpoint", "topic", "partition", "offset", "index",
             "reason", "batch_requests")


class JsonFormatter(logging.Formatter):
    """One JSON object per line; never raises on odd values (they are str()-ed)."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace(
                "+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ID_FIELDS:
            value = record.__dict__.get(key)
            if value is not None:
                doc[key] = value
        if record.exc_info:
            doc["exception"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        elif record.exc_text:
            doc["exception"] = record.exc_text
        if record.stack_info:
            doc["stack"] = record.stack_info
        return orjson.dumps(doc, default=str).decode()


def log_format(setting: str | None = None) -> str:
    """The configured format: the setting if given, else $DETECTOR_LOG_FORMAT, else json."""
    fmt = (setting or os.environ.get(FORMAT_ENV) or "json").strip().lower()
    if fmt not in FORMATS:
        raise ValueError(f"{FORMAT_ENV} must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return fmt


def logging_config(level: str | int = "INFO", fmt: str | None = None) -> dict[str, Any]:
    """A `logging.config.dictConfig` mapping: one handler on stderr (a container
    runtime collects it; stdout is not used because Faust's worker redirects it into
    the log, so stray prints become log records too)."""
    fmt = log_format(fmt)
    if isinstance(level, int):
        level = logging.getLevelName(level)
    formatter: dict[str, Any] = {"()": JsonFormatter} if fmt == "json" else {"format": TEXT_FORMAT}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"detector": formatter},
        "handlers": {"detector": {"class": "logging.StreamHandler", "formatter": "detector",
                                  "stream": "ext://sys.stderr"}},
        "root": {"level": str(level).upper(), "handlers": ["detector"]},
    }


def configure(level: str | int = "INFO", fmt: str | None = None) -> None:
    import logging.config

    logging.config.dictConfig(logging_config(level, fmt))
