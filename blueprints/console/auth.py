from __future__ import annotations

from flask import current_app, flash, redirect, request, session, url_for
from werkzeug.wrappers import Response as BaseResponse

from blueprints.console.base import bp, log, render_page
from service.console import access
from service.extensions import get_settings

throttle = access.SignInThrottle()


@bp.route("/sign-in", methods=["GET", "POST"])
def sign_in() -> BaseResponse:
    """Show the sign-in form; sign in with ADMIN_API_TOKEN."""
    if request.method == "GET":
        if access.is_signed_in(session):
            return redirect(url_for("console.overview"), code=303)
        return render_page("console/sign_in.html")
    address = request.remote_addr or "unknown"
    locked = throttle.locked_for(address)
    if locked:
        log.warning("console sign-in refused: too many failures from this address",
                    extra={"event": {"client": address, "locked_seconds": int(locked)}})
        response = render_page("console/sign_in.html", status=429,
                         error=f"Too many failed sign-ins; try again in {int(locked) + 1} s.")
        response.headers["Retry-After"] = str(int(locked) + 1)
        return response
    if access.token_matches(request.form.get("token", ""), get_settings().admin_api_token):
        throttle.succeeded(address)
        access.start_session(session)
        session.permanent = True
        log.info("console sign-in", extra={"event": {"client": address}})
        return redirect(url_for("console.overview"), code=303)
    wait = throttle.failed(address)
    log.warning("console sign-in failed: wrong token", extra={"event": {
        "client": address, "pause_seconds": wait}})
    access.pause(wait)
    return render_page("console/sign_in.html", status=401,
                 error="That token is not the ADMIN_API_TOKEN of this service.")


@bp.get("/sign-in/link")
def sign_in_link() -> BaseResponse:
    """Sign in with a one-time link made by `flask console sign-in-link`."""
    code = request.args.get("code", "")
    address = request.remote_addr or "unknown"
    if throttle.locked_for(address) or not access.redeem_sign_in_code(
            current_app.instance_path, code):
        log.warning("console sign-in link refused: unknown, used or expired",
                    extra={"event": {"client": request.remote_addr}})
        access.pause(throttle.failed(address))
        return render_page("console/sign_in.html", status=401,
                     error="That sign-in link is unknown, expired or already used.")
    access.start_session(session)
    session.permanent = True
    log.info("console sign-in with a one-time link",
             extra={"event": {"client": request.remote_addr}})
    return redirect(url_for("console.overview"), code=303)


@bp.post("/sign-out")
def sign_out() -> BaseResponse:
    """End the console session."""
    session.clear()
    flash("Signed out.")
    return redirect(url_for("console.sign_in"), code=303)
