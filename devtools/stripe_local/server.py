from __future__ import annotations

import argparse
from collections.abc import Sequence

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from devtools.serving import RunningServer, start_thread

from .app import create_app
from .state import DEFAULT_API_KEY, StripeLocal


class _QuietRequestHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # One line per request drowns test output; errors are still logged.
        pass


class StripeLocalServer(RunningServer):
    """A running stripe_local on a background thread; stop it with `shutdown()` or `with`."""

    def __init__(self, state: StripeLocal, server: BaseWSGIServer) -> None:
        super().__init__(server, start_thread(server))
        self.state = state


def serve(
    state: StripeLocal | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
) -> StripeLocalServer:
    """Serve `state` (a fresh StripeLocal by default) on a background thread; port 0 picks one."""
    if state is None:
        state = StripeLocal()
    server = make_server(
        host, port, create_app(state), threaded=True, request_handler=_QuietRequestHandler
    )
    return StripeLocalServer(state, server)


def main(argv: Sequence[str] | None = None) -> None:
    """Serve stripe_local in the foreground until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m devtools.stripe_local")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=12111)
    parser.add_argument("--api-key", default=DEFAULT_API_KEY)
    parser.add_argument("--account", action="append", default=[], help="connected account id")
    args = parser.parse_args(argv)
    state = StripeLocal(api_key=args.api_key, accounts=args.account)
    server = make_server(args.host, args.port, create_app(state), threaded=True)
    print(f"stripe_local listening on http://{args.host}:{server.port}", flush=True)
    server.serve_forever()
