"""Text that others wrote, made safe to print on a terminal.

Process command lines and user names come from any user of the machine; team, model and
GPU names from any holder of an ingest key. Printed raw, an escape sequence among them
would drive the reader's terminal (clear it, retitle it, hide or fake lines), so every
control character, line separator, bidirectional override and lone surrogate is shown
as its escape (``\\x1b``), as ``ps`` shows such bytes as ``?``.
"""

from __future__ import annotations

_CONTROLS = (*range(0x20), 0x7F, *range(0x80, 0xA0))
_INVISIBLE = (0x061C, 0x200E, 0x200F, 0x2028, 0x2029, *range(0x202A, 0x202F),
              *range(0x2066, 0x206A), *range(0xD800, 0xE000))
_ESCAPES: dict[int, str] = {**{c: f"\\x{c:02x}" for c in _CONTROLS},
                            **{c: f"\\u{c:04x}" for c in _INVISIBLE}}


def printable(text: str) -> str:
    """``text`` with everything that could act on a terminal shown as an escape."""
    return text if text.isprintable() else text.translate(_ESCAPES)


def printable_lines(text: str) -> str:
    """``printable`` for each line of ``text``, its line breaks kept."""
    return "\n".join(map(printable, text.split("\n")))
