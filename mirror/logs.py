"""Logging set-up: one line per event, key=value (default) or JSON."""

from __future__ import annotations

import json
import logging
import sys
import time


class JsonFormatter(logging.Formatter):
    """Each record as one JSON object: time, level, logger, and the key=value pairs."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        for part in message.split(" "):
            key, sep, value = part.partition("=")
            if sep and key.isidentifier():
                entry[key] = value.strip("'\"")
        entry["msg"] = message
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup(level: str = "info", fmt: str = "kv") -> None:
    """Configure the root logger to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s level=%(levelname)s logger=%(name)s %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's own access log is replaced by ours.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # SQL statement chatter is not an event.
    logging.getLogger("aiosqlite").setLevel(logging.INFO)
