"""One-line key=value logs; level from LOG_LEVEL."""

from __future__ import annotations

import logging
import sys
import time

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        msg = record.getMessage().replace("\n", " | ")
        line = (
            f"ts={ts}.{int(record.msecs):03d}Z level={record.levelname.lower()} "
            f"logger={record.name} msg={msg!r}"
        )
        extra = getattr(record, "kv", None)
        if isinstance(extra, dict):
            line += "".join(
                f" {k}={v!r}" if isinstance(v, str) else f" {k}={v}" for k, v in extra.items()
            )
        if record.exc_info:
            line += " exc=" + repr(self.formatException(record.exc_info))
        return line


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS[level])
    # The CQL driver is chatty at info about topology we do not control.
    logging.getLogger("cassandra").setLevel(max(_LEVELS[level], logging.WARNING))


def kv(**fields: object) -> dict[str, object]:
    """`log.info("msg", extra=kv(room=r))` adds key=value pairs to the line."""
    return {"kv": fields}
