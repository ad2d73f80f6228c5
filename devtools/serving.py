from __future__ import annotations

import threading
from types import TracebackType
from typing import TYPE_CHECKING, Self

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication


class RunningServer:
    """A WSGI app served on a background thread until shutdown()."""

    def __init__(self, server: BaseWSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self._closed = False

    @property
    def host(self) -> str:
        return self._server.host

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def shutdown(self) -> None:
        """Stop serving and close the listening socket; calling it again does nothing."""
        if self._closed:
            return
        self._closed = True
        self._server.shutdown()
        self._thread.join()
        self._server.server_close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.shutdown()


def serve_wsgi(
    app: WSGIApplication,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    request_handler: type[WSGIRequestHandler] | None = None,
) -> RunningServer:
    """Serve `app` with werkzeug's threaded server in a daemon thread; port 0 picks a free one."""
    server = make_server(host, port, app, threaded=True, request_handler=request_handler)
    return RunningServer(server, start_thread(server))


def start_thread(server: BaseWSGIServer) -> threading.Thread:
    """Run server's loop in a daemon thread."""
    # shutdown() waits for the serving loop to notice; the default 0.5 s poll makes it slow.
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.01},
        name=f"wsgi-{server.port}",
        daemon=True,
    )
    thread.start()
    return thread
