from __future__ import annotations

import json
import socket
import time
from typing import Any

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from .state import StripeLocal
from .wire import StripeLocalError, decode_params, new_id


def create_app(stripe: StripeLocal) -> Flask:
    """Build the WSGI app serving `stripe` over Stripe's HTTP API."""
    app = Flask(__name__)
    app.extensions["stripe_local"] = stripe

    def error_response(error: StripeLocalError) -> Response:
        return Response(json.dumps(error.body()), error.status, mimetype="application/json")

    def json_response(body: Any, status: int = 200) -> Response:
        return Response(json.dumps(body), status, mimetype="application/json")

    def drop_connection() -> Response:
        sock = request.environ.get("werkzeug.socket")
        if isinstance(sock, socket.socket):
            # Both directions: the client sees the connection close with no response at all.
            sock.shutdown(socket.SHUT_RDWR)
        return Response(b"", 500)

    def pairs() -> list[tuple[str, str]]:
        source = request.form if request.method == "POST" else request.args
        return list(source.items(multi=True))

    @app.before_request
    def receive() -> Response | None:
        g.request_id = new_id("req_", 14)
        if not request.path.startswith("/v1/"):
            return None
        stripe.record(
            method=request.method,
            path=request.path,
            pairs=pairs(),
            idempotency_key=request.headers.get("Idempotency-Key"),
            stripe_version=request.headers.get("Stripe-Version"),
        )
        if stripe.latency:
            time.sleep(stripe.latency)
        stripe.authenticate(request.headers.get("Authorization"))
        fault = stripe.take_fault(request.method, request.path)
        if fault is None:
            return None
        if fault.stored and fault.status is not None and request.method == "POST":
            g.outcome = StripeLocalError(fault.status, fault.message, error_type=fault.error_type,
                                         code=fault.code, stored=True)
            return None
        if fault.status is None:
            if fault.after_processing:
                g.drop = True
                return None
            return drop_connection()
        return error_response(
            StripeLocalError(
                fault.status, fault.message, error_type=fault.error_type, code=fault.code
            )
        )

    @app.after_request
    def send(response: Response) -> Response:
        response.headers["Request-Id"] = g.get("request_id", "")
        if request.method == "POST" and "Idempotency-Key" in request.headers:
            response.headers["Idempotency-Key"] = request.headers["Idempotency-Key"]
        if g.get("drop"):
            return drop_connection()
        return response

    @app.errorhandler(StripeLocalError)
    def stripe_error(error: StripeLocalError) -> Response:
        return error_response(error)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        return error_response(
            StripeLocalError(
                error.code or 500,
                f"Unrecognized request URL ({request.method}: {request.path}).",
            )
        )

    @app.post("/v1/transfers")
    def create_transfer() -> Response:
        key = request.headers.get("Idempotency-Key")
        received = pairs()
        params = decode_params(received)

        def handle() -> dict[str, Any]:
            outcome = g.pop("outcome", None)
            if outcome is not None:  # a stored fault: the request's outcome is this error
                raise outcome
            return stripe.create_transfer(params, key)

        status, body, headers = stripe.idempotent_post(
            key=key,
            path=request.path,
            pairs=received,
            request_id=g.request_id,
            handle=handle,
        )
        return Response(body, status, headers=headers, mimetype="application/json")

    @app.get("/v1/transfers")
    def list_transfers() -> Response:
        return json_response(stripe.list_transfers(decode_params(pairs())))

    @app.get("/v1/transfers/<transfer_id>")
    def get_transfer(transfer_id: str) -> Response:
        return json_response(stripe.get_transfer(transfer_id, decode_params(pairs())))

    @app.get("/v1/payment_intents/<intent_id>")
    def get_payment_intent(intent_id: str) -> Response:
        return json_response(stripe.get_payment_intent(intent_id, decode_params(pairs())))

    @app.get("/v1/charges/<charge_id>")
    def get_charge(charge_id: str) -> Response:
        return json_response(stripe.get_charge(charge_id, decode_params(pairs())))

    @app.get("/_test/stats")
    def stats() -> Response:
        return json_response(stripe.stats())

    @app.post("/_test/accounts")
    def add_account() -> Response:
        body = request.get_json(silent=True) or {}
        return json_response({"id": stripe.add_account(body.get("id"))})

    @app.post("/_test/payments")
    def add_payment() -> Response:
        body = request.get_json(silent=True) or {}
        try:
            payment = stripe.add_payment(
                amount=int(body.get("amount", 10_000)),
                currency=str(body.get("currency", "eur")),
                status=body.get("status", "paid"),
            )
        except ValueError as exc:
            raise StripeLocalError(400, str(exc)) from exc
        return json_response(
            {"payment_intent": payment.payment_intent_id, "charge": payment.charge_id}
        )

    @app.post("/_test/faults")
    def add_fault() -> Response:
        body = request.get_json(silent=True) or {}
        times = int(body.get("times", 1))
        path_prefix = str(body.get("path_prefix", "/v1/transfers"))
        method = body.get("method")
        if body.get("drop"):
            stripe.drop_next(
                times=times,
                path_prefix=path_prefix,
                method=method,
                after_processing=bool(body.get("after_processing", True)),
            )
        else:
            stripe.fail_next(
                int(body.get("status", 500)),
                times=times,
                error_type=body.get("error_type"),
                code=body.get("code"),
                message=body.get("message"),
                path_prefix=path_prefix,
                method=method,
                stored=bool(body.get("stored", False)),
            )
        return json_response({"ok": True})

    @app.post("/_test/reset")
    def reset() -> Response:
        stripe.reset()
        return json_response({"ok": True})

    return app
