"""One line per event; JSON when log.format is json. Never passwords, tokens or texts."""

from __future__ import annotations

import json
import logging
import re
import sys
import time

# Attributes a LogRecord has of its own; anything else was passed in `extra`.
STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
SECRET_QUERY = re.compile(r"((?:^|[?&])token=)[^&\s\"'#]*")
# A JWT (ours start with the base64 of '{"alg"'), wherever it turns up.
JWT = re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]+")


def redact(text: str) -> str:
    """A request URI (or any log line) with ?token= values and JWTs hidden."""
    return JWT.sub("[redacted]", SECRET_QUERY.sub(r"\1[redacted]", text))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                    + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in STANDARD})
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        # Last line of defence: Tornado's own error lines include request URIs.
        return redact(json.dumps(entry, default=str))


class TextFormatter(logging.Formatter):
    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = {k: v for k, v in vars(record).items() if k not in STANDARD and v != ""}
        if extra:
            line += " " + " ".join(f"{k}={v}" for k, v in extra.items())
        return redact(line)


def configure(fmt: str = "text", level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("pika").setLevel(logging.WARNING)
    # pymongo's DEBUG lines hold whole commands: message texts and password hashes.
    logging.getLogger("pymongo").setLevel(logging.WARNING)
