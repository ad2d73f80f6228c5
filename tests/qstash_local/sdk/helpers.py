from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.helpers import ROOT

JS_DIR = ROOT / "tests" / "js"


JsCall = Callable[..., Any]


def ok(answer: dict[str, Any]) -> Any:
    """Return the result of a JavaScript SDK call that must have succeeded."""
    assert answer["ok"], answer
    return answer["result"]
