"""Text from files made safe to show: ids, paths and folder names reach terminals and logs escaped and capped.

An id in an untrusted shard folder (or a run folder's name) may hold ANSI escapes, NULs, newlines that
forge a log record, or a megabyte of text; `shown` turns it into one printable line of bounded length,
and `ShownFormatter` does the same for the arguments of every log record it formats.
"""

from __future__ import annotations

import logging
import numbers
from typing import Any

__all__ = ["LOG_ARG_CHARS", "SHOWN_CHARS", "ShownFormatter", "shown"]

SHOWN_CHARS = 500
"""Characters of one id or path shown before it is cut (the count of the rest is shown instead)."""
LOG_ARG_CHARS = 2000
"""Characters of one log-record argument (a path, an id, an error message) before it is cut."""


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def shown(text: object, limit: int = SHOWN_CHARS) -> str:
    """``text`` as one printable line: characters that are not printable (controls, ESC, NUL, line and
    paragraph separators, bidirectional overrides, lone surrogates) written as ``\\xNN`` / ``\\uNNNN``,
    and cut after ``limit`` characters with the number left out."""
    text = str(text)
    head = text[:limit]
    if not head.isprintable():
        head = "".join(c if c.isprintable() else _escape(c) for c in head)
    return head if len(text) <= limit else f"{head}... ({len(text) - limit} more characters)"


class ShownFormatter(logging.Formatter):
    """A `logging.Formatter` whose records' arguments are passed through `shown` (numbers kept as they
    are), so a path or an id logged with ``%s`` cannot forge a line; the message templates are the
    library's own and keep their layout."""

    def format(self, record: logging.LogRecord) -> str:
        if not record.args:
            return super().format(record)
        copy = logging.makeLogRecord(record.__dict__)
        if isinstance(record.args, dict):
            copy.args = {k: _safe_arg(v) for k, v in record.args.items()}
        else:
            copy.args = tuple(_safe_arg(a) for a in record.args)
        return super().format(copy)


def _safe_arg(value: Any) -> Any:
    if isinstance(value, numbers.Number):  # numpy's too: %d and %.3f keep working
        return value
    return shown(value, LOG_ARG_CHARS)
