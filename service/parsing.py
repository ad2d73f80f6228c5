from __future__ import annotations

import re
from typing import Final

# Plain ASCII digits (str.isdigit() also accepts "²", which int() refuses), few enough that
# int() is cheap; the caller's maximum bounds the value.
DIGITS_RE: Final = re.compile(r"[0-9]{1,18}")


def whole_number(text: str, *, maximum: int) -> int | None:
    """Return `text` as an integer from 0 to `maximum`, or None if it is anything else."""
    if not DIGITS_RE.fullmatch(text):
        return None
    value = int(text)
    return value if value <= maximum else None
