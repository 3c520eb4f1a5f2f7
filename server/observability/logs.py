"""Logging: one line per lifecycle event, text or JSON, plus sampled access logs."""

from __future__ import annotations

import json
import logging
import random
import time

ACCESS = logging.getLogger("torchwire.access")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)


def configure_logging(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class AccessLog:
    """Logs a sampled fraction of requests: method, model, status and duration (never tensors or tokens)."""

    def __init__(self, sample: float) -> None:
        self.sample = sample

    def wanted(self) -> bool:
        return self.sample > 0 and (self.sample >= 1 or random.random() < self.sample)

    def log(self, method: str, model: str, code: str, seconds: float, peer: str) -> None:
        ACCESS.info(
            "%s model=%s status=%s duration_ms=%.3f peer=%s", method, model or "-", code, seconds * 1000, peer
        )
