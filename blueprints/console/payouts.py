from __future__ import annotations

from flask import flash, redirect, request, url_for
from werkzeug.wrappers import Response as BaseResponse

from blueprints.console.base import bp, log, render_page
from service.console import payouts as payout_views
from service.extensions import get_sessions, get_settings
from service.notifications.channels import mask_email
from service.payouts import registry
from service.runs.history import run_history


@bp.get("/payouts")
def payouts() -> BaseResponse:
    """Show transfer totals by status and currency, and the transfers that need a person."""
    settings = get_settings()
    attention, counts = payout_views.needing_attention(
        get_sessions(), max_attempts=settings.payout_max_attempts)
    maintenance = run_history(get_sessions(), job="process-tasks", status="succeeded", limit=1)
    refunded = (maintenance[0]["result"] or {}).get("refunded_after_transfer", 0) \
        if maintenance else 0
    return render_page("console/payouts.html", totals=payout_views.totals(get_sessions()),
                 attention=attention, counts=counts, refunded=refunded,
                 maintenance=maintenance[0] if maintenance else None)


@bp.get("/payouts/transfers/<int:transfer_id>")
def transfer(transfer_id: int) -> BaseResponse:
    """Show one transfer, its expert (e-mail masked) and its history."""
    row = registry.get_transfer(get_sessions(), transfer_id)
    expert = registry.get_expert(get_sessions(), row["expert_id"])
    expert = {**expert, "email": mask_email(expert.get("email") or "")}
    return render_page("console/transfer.html", transfer=row, expert=expert,
                 history=payout_views.history(get_sessions(), row))


@bp.post("/payouts/transfers/<int:transfer_id>/approve")
def approve(transfer_id: int) -> BaseResponse:
    """Approve a transfer awaiting approval, naming who approves."""
    row = registry.approve_transfer(get_sessions(), transfer_id,
                                  request.form.get("approved_by", ""))
    log.info("console approved a transfer", extra={"event": {"transfer_id": transfer_id}})
    flash(f"Transfer {row['id']} approved by {row['approved_by']}; the next transfer run "
          "pays it.")
    return redirect(url_for("console.transfer", transfer_id=transfer_id), code=303)
