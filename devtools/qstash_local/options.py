from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar, cast

import click

from .config import PLANS, LocalQStashConfig, Plan

F = TypeVar("F", bound=Callable[..., Any])

_OPTIONS = (
    click.option(
        "--plan",
        type=click.Choice(sorted(PLANS)),
        default="free",
        show_default=True,
        envvar="QSTASH_DEV_PLAN",
        help="Enforce this QStash plan's limits: response time, message size, delay, schedules.",
    ),
    click.option(
        "--concurrency",
        type=click.IntRange(min=1),
        default=LocalQStashConfig.concurrency,
        show_default=True,
        envvar="QSTASH_DEV_CONCURRENCY",
        help="Deliveries in flight at once.",
    ),
    click.option(
        "--delivery-timeout",
        type=click.FloatRange(min=0, min_open=True),
        default=None,
        envvar="QSTASH_DEV_DELIVERY_TIMEOUT",
        help="Seconds a destination may take to answer [default: the plan's].",
    ),
)


def delivery_options(command: F) -> F:
    """Add --plan, --concurrency and --delivery-timeout to a click command."""
    for option in reversed(_OPTIONS):
        command = option(command)
    return command


def config_from_options(
    base: LocalQStashConfig,
    *,
    plan: str,
    concurrency: int,
    delivery_timeout: float | None,
) -> LocalQStashConfig:
    """Return `base` with the values of the options `delivery_options` adds."""
    config = replace(base.with_plan(cast(Plan, plan)), concurrency=concurrency)
    if delivery_timeout is not None:
        config = replace(config, delivery_timeout=delivery_timeout)
    return config
