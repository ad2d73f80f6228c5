from __future__ import annotations

import click
from flask import current_app
from flask.cli import AppGroup

from service.console.access import LINK_LIFETIME, create_sign_in_code
from service.extensions import get_settings

group = AppGroup("console", help="The ops console at /admin/.")


@group.command("sign-in-link")
@click.option("--base-url", help="The service's address as the browser reaches it "
                                 "(default: APP_URL).")
def sign_in_link(base_url: str | None) -> None:
    """Print a link that signs in to the console once, within ten minutes."""
    settings = get_settings()
    if settings.admin_api_token is None:
        raise click.ClickException("the console is off: set ADMIN_API_TOKEN to turn it on")
    base = (base_url or settings.app_url or "").rstrip("/")
    if not base:
        raise click.ClickException("APP_URL is missing; pass --base-url")
    code = create_sign_in_code(current_app.instance_path)
    click.echo(f"{base}/admin/sign-in/link?code={code}")
    click.echo(f"(valid once, for {int(LINK_LIFETIME.total_seconds() // 60)} minutes)", err=True)
