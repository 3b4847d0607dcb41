"""Process-wide logging: one handler on the root logger, in text or JSON.

uvicorn is started without a logging config of its own (``UVICORN_LOG_CONFIG``), so its
loggers, aiohttp's and ours all propagate to the root handler and share one format: with
``json`` every line a process writes to stderr is one JSON object.
"""

from __future__ import annotations

import logging
import sys

from llm_router.observability.access_log import JsonFormatter

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: Passed to ``uvicorn.Config(log_config=...)``: keep ours, install none of uvicorn's.
UVICORN_LOG_CONFIG = None


class RootHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Ours, so that configuring twice in one process replaces it instead of adding one."""


def setup_logging(level: str, log_format: str = "text") -> None:
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, RootHandler)]:
        root.removeHandler(handler)
    handler = RootHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    root.addHandler(handler)
    root.setLevel(level.upper())
    # uvicorn's loggers may have been configured by an earlier server in this process.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
