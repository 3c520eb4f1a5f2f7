"""Logging: one line per lifecycle event, text or JSON, plus sampled access logs."""

from __future__ import annotations

import json
import logging
import random
import time

ACCESS = logging.getLogger("torchwire.access")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):  # structured records (access lines) carry their values apart
            line |= fields
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


def route_torch_logs() -> None:
    """Send torch's own log lines through our handler, in our format (JSON lines stay JSON).

    Importing torch gives its loggers stderr handlers of their own, with propagation off, so their
    lines (an AOTInductor package's CPU-feature note, say) would skip the format `--log-format`
    chose. Called once torch is imported; their levels stay torch's."""
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and name.split(".")[0] == "torch" and logger.handlers:
            logger.handlers.clear()
            logger.propagate = True


class AccessLog:
    """Logs a sampled fraction of requests: method, model, status and duration (never tensors or tokens)."""

    def __init__(self, sample: float) -> None:
        self.sample = sample

    def wanted(self) -> bool:
        return self.sample > 0 and (self.sample >= 1 or random.random() < self.sample)

    def log(
        self, method: str, model: str, version: str, code: str, seconds: float, peer: str, request_id: str
    ) -> None:
        """One line: as text, key=value pairs in the message; as JSON, each also a field of its own."""
        fields = {
            "method": method,
            "model": model,
            "version": version,
            "status": code,
            "duration_ms": round(seconds * 1000, 3),
            "request_id": request_id,
            "peer": peer,
        }
        ACCESS.info(
            "%s model=%s version=%s status=%s duration_ms=%.3f request_id=%s peer=%s",
            method,
            model or "-",
            version or "-",
            code,
            seconds * 1000,
            request_id or "-",
            peer,
            extra={"fields": fields},
        )
