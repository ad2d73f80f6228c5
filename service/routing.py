from __future__ import annotations

from flask import Flask
from werkzeug.routing import IntegerConverter


class AsciiIntegerConverter(IntegerConverter):
    """Match ids of ASCII digits only; werkzeug's `int` takes any Unicode digit (`١` is 1)."""

    regex = r"[0-9]+"


def init_routing(app: Flask) -> None:
    """Make `<int:...>` in every route, registered after this, match ASCII digits only."""
    app.url_map.converters["int"] = AsciiIntegerConverter
