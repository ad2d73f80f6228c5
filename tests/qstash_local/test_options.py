from __future__ import annotations

from typing import Any

import click
from click.testing import CliRunner

from devtools.qstash_local import LocalQStashConfig
from devtools.qstash_local.options import config_from_options, delivery_options


@click.command()
@delivery_options
def show(**options: Any) -> None:
    config = config_from_options(LocalQStashConfig(backoff_scale=0.01), **options)
    click.echo(
        f"{config.concurrency} {config.delivery_timeout} {config.max_message_size} "
        f"{config.max_delay} {config.schedule_quota} {config.backoff_scale}"
    )


def test_defaults_are_the_free_plan() -> None:
    result = CliRunner().invoke(show, [])

    assert result.output.split() == ["16", "900.0", "1048576", "604800", "10", "0.01"]


def test_payg_plan_and_overrides() -> None:
    result = CliRunner().invoke(
        show, ["--plan", "payg", "--concurrency", "2", "--delivery-timeout", "3600"]
    )

    assert result.output.split() == ["2", "3600.0", "10485760", "31536000", "1000", "0.01"]


def test_environment_and_bad_values() -> None:
    runner = CliRunner()

    from_env = runner.invoke(show, [], env={"QSTASH_DEV_PLAN": "payg"})
    bad = runner.invoke(show, ["--concurrency", "0"])

    assert from_env.output.split()[1] == "7200.0"
    assert bad.exit_code == 2
    assert "--concurrency" in bad.output
