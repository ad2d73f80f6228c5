from __future__ import annotations

from flask import Blueprint

from . import (
    admin,
    check_upcoming_payouts,
    console,
    health,
    metrics,
    payouts_api,
    process_expert_transfers,
    process_tasks,
    qstash,
)

BLUEPRINTS: tuple[Blueprint, ...] = (
    health.bp,
    metrics.bp,
    qstash.bp,
    admin.bp,
    payouts_api.bp,
    process_tasks.bp,
    process_expert_transfers.bp,
    check_upcoming_payouts.bp,
    console.bp,
)
