from __future__ import annotations

import time

import click

from .config import DEV_CURRENT_SIGNING_KEY, DEV_NEXT_SIGNING_KEY, DEV_TOKEN, LocalQStashConfig
from .core import LocalQStash
from .options import config_from_options, delivery_options
from .server import serve


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; keep it on loopback.")
@click.option("--port", default=8080, show_default=True, envvar="QSTASH_DEV_PORT", type=int)
@click.option("--sign-with", type=click.Choice(["current", "next"]), default="current",
              show_default=True, help="Sign deliveries with the next key to rehearse a key roll.")
@click.option("--backoff-scale", default=0.01, show_default=True, type=float,
              help="Multiply QStash's retry backoff (1.0 = real timings).")
@click.option("--allow-remote", is_flag=True, help="Deliver to non-loopback destinations too.")
@delivery_options
def main(host: str, port: int, sign_with: str, backoff_scale: float, allow_remote: bool,
         plan: str, concurrency: int, delivery_timeout: float | None) -> None:
    """Run a local, in-memory QStash-compatible server until Ctrl-C."""
    local = LocalQStash(config_from_options(
        LocalQStashConfig(
            sign_with=sign_with,  # type: ignore[arg-type]
            backoff_scale=backoff_scale,
            allow_remote_destinations=allow_remote,
        ),
        plan=plan, concurrency=concurrency, delivery_timeout=delivery_timeout,
    ))
    try:
        server = serve(local, host=host, port=port)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port} ({exc.strerror}); "
                                   "pick another with --port or QSTASH_DEV_PORT") from exc
    local.start(interval=0.5)
    click.echo(f"local QStash is running at {server.url}; point the service at it with:\n"
               f"  QSTASH_URL={server.url}\n  QSTASH_TOKEN={DEV_TOKEN}\n"
               f"  QSTASH_CURRENT_SIGNING_KEY={DEV_CURRENT_SIGNING_KEY}\n"
               f"  QSTASH_NEXT_SIGNING_KEY={DEV_NEXT_SIGNING_KEY}\n"
               "State is in memory and lost on exit. Press Ctrl-C to stop.")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        local.stop()
        server.shutdown()

