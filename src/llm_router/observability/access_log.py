"""JSON logs: one line per proxied request (when ``access_log`` is on), and a formatter for
the rest of the router's logs.

The access log is off by default because formatting and writing a line per request costs
throughput on the hot path; when on, a line is one ``orjson`` dump and one write.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

ACCESS_LOGGER = "llm_router.access"


class JsonFormatter(logging.Formatter):
    """Every record as one JSON object: time, level, logger, message (+ exception)."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(body).decode()


class AccessLineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The access log's own handler, so it is installed once however often apps are built."""


def access_logger() -> logging.Logger:
    """The access logger, writing bare JSON lines to stdout.

    It does not propagate, so a root handler configured elsewhere cannot wrap the JSON in a
    second format. The handler is installed once per process: logging is process-wide.
    """
    logger = logging.getLogger(ACCESS_LOGGER)
    if not any(isinstance(h, AccessLineHandler) for h in logger.handlers):
        handler = AccessLineHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


class AccessLog:
    def __init__(self, logger: logging.Logger, replica: str) -> None:
        self._logger = logger
        self._replica = replica

    def write(self, entry: dict[str, Any]) -> None:
        line = {"ts": round(time.time(), 3), "event": "request", "replica": self._replica}
        line.update(entry)
        self._logger.info(orjson.dumps(line).decode())
