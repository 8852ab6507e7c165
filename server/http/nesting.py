"""How deep a JSON text nests, measured without parsing it (the stdlib parser recurses)."""

from __future__ import annotations

import re
from itertools import accumulate

# A JSON string (escapes included), unrolled so a long string is one fast regex step.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = [0] * 256
_STEP[ord("[")] = _STEP[ord("{")] = 1
_STEP[ord("]")] = _STEP[ord("}")] = -1


def nested_deeper_than(body: bytes, limit: int) -> bool:
    """Whether the JSON text ``body`` nests arrays and objects more than ``limit`` levels.

    Every step runs in C (regex, translate, accumulate), so an 8 MB body costs
    milliseconds, never a recursion. Brackets inside strings do not count; in a body
    that is not JSON at all the answer is a guess, and the parser then says what is wrong.
    """
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    brackets = _STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0) > limit
