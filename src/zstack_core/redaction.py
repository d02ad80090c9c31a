"""Keeping secrets out of logs and API responses.

Secrets travel inside values the node must keep and show: a host's libvirt URI
(``qemu+ssh://root:pw@host/system``), a database URL (``postgresql://zstack:pw@db/zstack``).
:func:`redact` replaces the password part of every such URL in a text with ``***``;
:func:`install_log_redaction` makes every log record of the process pass through it (the
message and any traceback), whatever handler writes it; the HTTP API passes every response
body through it. Other secrets (account passwords, session UUIDs, the cluster secret) are never
put into a message or a reply in the first place.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

__all__ = ["install_log_redaction", "redact"]

_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/?#@\"'<>]*:)(?P<pw>[^\s@/?#\"'<>]*)@")
_KEY_VALUE = re.compile(r"(?P<head>\b(?:password|passwd|secret)\s*[=:]\s*)(?P<pw>[^\s&,;\"'<>]+)", re.I)


def redact(text: str) -> str:
    """``text`` with the passwords of URLs (and ``password=...`` pairs) replaced by ``***``."""
    if "@" in text:
        text = _USERINFO.sub(lambda m: m.group("head") + "***@" if m.group("pw") else m.group(0), text)
    if "ass" in text or "ecret" in text:  # cheap guard before the second pattern
        text = _KEY_VALUE.sub(lambda m: m.group("head") + "***", text)
    return text


_lock = threading.Lock()
_installed = False


def install_log_redaction() -> None:
    """Make every log record created from now on redacted (idempotent; process-wide, since
    handlers belong to the program that embeds the node, not to the node)."""
    global _installed
    with _lock:
        if _installed:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            try:
                message = record.getMessage()
            except Exception:  # a bad format string: the handler reports it as usual
                return record
            clean = redact(message)
            if clean != message:
                record.msg, record.args = clean, None
            if record.exc_info and record.exc_info[1] is not None:
                text = logging.Formatter().formatException(record.exc_info)
                clean_exc = redact(text)
                if clean_exc != text:
                    record.exc_text = clean_exc
            return record

        logging.setLogRecordFactory(factory)
        _installed = True
