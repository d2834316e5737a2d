"""Logging for long-running commands: one line per event, text or JSON, never credentials.

    from cstore.ops import setup_logging
    redactor = setup_logging("json", "INFO")        # or None: $CSTORE_LOG_FORMAT / $CSTORE_LOG_LEVEL
    redactor.add_secret(cfg.password)               # once the configuration is loaded
    log.info("batch committed", extra={"model": "fraud", "events": 512, "version": 41})

JSON lines carry ``time`` (UTC, RFC 3339), ``level``, ``logger``, ``message``, then every
``extra`` field, and ``exc`` for a traceback. Text lines read
``2026-11-26T14:32:08.123Z INFO cstore.worker: batch committed model=fraud events=512``.

The :class:`RedactingFilter` sits on the handler, so it sees every record from every logger:
it masks the configured secret values (the Cassandra password, from the config or
``$CSTORE_PASSWORD``) wherever they appear, values of ``password=…``/``"token": …``-like
pairs, the password in ``scheme://user:password@host``, and extra fields whose name says
password/secret/token.
"""
from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterable
from typing import Any, TextIO

from cstore.errors import ConfigError

LOG_FORMATS = ("text", "json")
MASK = "***"

_SECRET_KEY = r"(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|credentials?)"
# key, then = or : (optionally quoted), then the value up to a delimiter.
_PAIR_RE = re.compile(r"(?i)(\b[\w.-]*" + _SECRET_KEY + r"[\w.-]*[\"']?\s*[:=]\s*[\"']?)([^\s\"',;&)}\]]+)")
_URL_RE = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^\s/:@]+:)([^\s/@]+)(@)", re.IGNORECASE)
_SECRET_NAME_RE = re.compile(r"(?i)" + _SECRET_KEY)
_AUTH_RE = re.compile(r"(?i)(\bauthorization[\"']?\s*[:=]\s*[\"']?(?:basic|bearer)\s+)([^\s\"',;]+)")

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None))) | {
    "message", "asctime", "taskName"}


class RedactingFilter(logging.Filter):
    """Masks credentials in a record's message, arguments, extra fields and traceback."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._secrets: tuple[str, ...] = ()
        for s in secrets:
            self.add_secret(s)

    def add_secret(self, value: str | None) -> None:
        """Mask this exact value from now on (empty values are ignored)."""
        if value:
            with self._lock:
                # longest first, so that a secret containing another is masked whole
                self._secrets = tuple(sorted(set(self._secrets) | {str(value)}, key=len, reverse=True))

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        text = _PAIR_RE.sub(lambda m: m.group(1) + MASK, text)
        text = _AUTH_RE.sub(lambda m: m.group(1) + MASK, text)
        return _URL_RE.sub(lambda m: m.group(1) + MASK + m.group(3), text)

    def _redact_value(self, key: str | None, value: Any) -> Any:
        if key is not None and _SECRET_NAME_RE.search(key) and value not in (None, ""):
            return MASK
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, dict):
            return {k: self._redact_value(str(k), v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self._redact_value(None, v) for v in value)
        if isinstance(value, (int, float, bool)) or value is None:
            return value
        return self.redact(str(value))  # anything else is logged through str() anyway

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: log what we have rather than nothing
            message = f"{record.msg!s} {record.args!r}"
        record.msg, record.args = self.redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        for key in extra_fields(record):
            setattr(record, key, self._redact_value(key, getattr(record, key)))
        return True


def extra_fields(record: logging.LogRecord) -> list[str]:
    """Names of the fields passed with ``extra=`` (in the order given)."""
    return [k for k in vars(record) if k not in _STANDARD_ATTRS and not k.startswith("_")]


def _utc_time(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, extra fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"time": _utc_time(record), "level": record.levelname,
                               "logger": record.name, "message": record.getMessage()}
        for key in extra_fields(record):
            out.setdefault(key, getattr(record, key))
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = record.stack_info
        return json.dumps(out, default=str, ensure_ascii=False, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """``TIME LEVEL logger: message key=value …`` (a traceback follows on its own lines)."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_utc_time(record)} {record.levelname} {record.name}: {record.getMessage()}"
        extras = [f"{k}={_text_value(getattr(record, k))}" for k in extra_fields(record)]
        if extras:
            line += " " + " ".join(extras)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + record.exc_text
        if record.stack_info:
            line += "\n" + record.stack_info
        return line


def _text_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False,
                                                          separators=(",", ":"))
    return json.dumps(text, ensure_ascii=False) if (not text or any(c.isspace() for c in text)) else text


def setup_logging(fmt: str | None = None, level: str | int | None = None, *, stream: TextIO | None = None,
                  secrets: Iterable[str | None] = (), logger: logging.Logger | None = None) -> RedactingFilter:
    """Send ``logger`` (default: the root logger) to ``stream`` (default stderr) in ``fmt``.

    ``fmt`` defaults to ``$CSTORE_LOG_FORMAT`` else ``text``; ``level`` to ``$CSTORE_LOG_LEVEL``
    else INFO. Handlers this function installed before are replaced, so calling it again (e.g.
    after parsing flags) is safe. ``$CSTORE_PASSWORD`` is always among the masked secrets.
    Returns the filter, to :meth:`~RedactingFilter.add_secret` more values later.
    """
    fmt = (fmt or os.environ.get("CSTORE_LOG_FORMAT") or "text").lower()
    if fmt not in LOG_FORMATS:
        raise ConfigError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {fmt!r}")
    level = level if level is not None else (os.environ.get("CSTORE_LOG_LEVEL") or "INFO")
    if isinstance(level, str):
        name = level.upper()
        if not isinstance(logging.getLevelName(name), int):
            raise ConfigError(f"unknown log level {level!r}; use DEBUG, INFO, WARNING or ERROR")
        level = logging.getLevelName(name)
    target = logger if logger is not None else logging.getLogger()
    redactor = RedactingFilter([os.environ.get("CSTORE_PASSWORD"), *secrets])
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(redactor)
    handler._cstore = True  # type: ignore[attr-defined]  # marks the handlers we own
    for old in list(target.handlers):
        # ours from an earlier call, and the plain stream handler of logging.basicConfig()
        if getattr(old, "_cstore", False) or type(old) is logging.StreamHandler:
            target.removeHandler(old)
            old.close()  # a StreamHandler leaves its stream open
    target.addHandler(handler)
    target.setLevel(level)
    return redactor
