from __future__ import annotations

from typing import TYPE_CHECKING

from devtools.serving import RunningServer, serve_wsgi

if TYPE_CHECKING:
    from .core import LocalQStash

__all__ = ["RunningServer", "serve", "serve_wsgi"]


def serve(local: LocalQStash, *, host: str = "127.0.0.1", port: int = 0) -> RunningServer:
    """Serve the REST API of `local` on a background thread."""
    return serve_wsgi(local.app, host=host, port=port)
