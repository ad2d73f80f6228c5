from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from .parsing import ApiError

if TYPE_CHECKING:
    from .core import LocalQStash

logger = logging.getLogger(__name__)


def create_api(local: LocalQStash) -> Flask:
    """Build the Flask app that serves the QStash REST API over `local`."""
    app = Flask(__name__)

    @app.before_request
    def count_and_authorize() -> Response | None:
        failure = local.record_api_call(request.method, request.path)
        if failure is not None:
            if failure.body is None:
                response = _error(failure.status, f"injected failure ({failure.status})")
            else:
                response = Response(
                    failure.body, status=failure.status, mimetype=_mimetype(failure.body)
                )
            response.headers.update(failure.headers)
            return response
        if not local.is_authorized(_token()):
            raise ApiError(401, "unauthorized: missing or invalid QStash token")
        return None

    @app.errorhandler(ApiError)
    def api_error(error: ApiError) -> Response:
        return _error(error.status, error.message)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        return _error(error.code or 500, error.description or error.name)

    @app.errorhandler(Exception)
    def unexpected_error(error: Exception) -> Response:
        logger.exception("local QStash API request failed")
        return _error(500, "internal error")

    @app.post("/v2/publish/<path:destination>")
    def publish(destination: str) -> tuple[Response, int]:
        result = local.publish(
            _raw_destination("/v2/publish/", destination),
            body=request.get_data(),
            headers=request.headers,
            query=request.query_string.decode("latin-1"),
            caller_ip=request.remote_addr or "127.0.0.1",
        )
        if result.deduplicated:
            return jsonify(messageId=result.message_id, deduplicated=True), 202
        return jsonify(messageId=result.message_id), 200

    @app.post("/v2/schedules/<path:destination>")
    def create_schedule(destination: str) -> Response:
        schedule_id = local.upsert_schedule(
            _raw_destination("/v2/schedules/", destination),
            body=request.get_data(),
            headers=request.headers,
            query=request.query_string.decode("latin-1"),
            caller_ip=request.remote_addr or "127.0.0.1",
        )
        return jsonify(scheduleId=schedule_id)

    @app.post("/v2/publish")
    @app.post("/v2/publish/")
    @app.post("/v2/schedules")
    @app.post("/v2/schedules/")
    def missing_destination() -> Response:
        raise ApiError(400, "destination is required: POST /v2/.../<http(s) URL>")

    @app.get("/v2/schedules")
    def list_schedules() -> Response:
        return jsonify(local.list_schedules())

    @app.get("/v2/schedules/<schedule_id>")
    def get_schedule(schedule_id: str) -> Response:
        return jsonify(local.get_schedule(schedule_id))

    @app.delete("/v2/schedules/<schedule_id>")
    def delete_schedule(schedule_id: str) -> Response:
        local.delete_schedule(schedule_id)
        return _empty()

    # The docs say POST, both SDKs send PATCH.
    @app.route("/v2/schedules/<schedule_id>/pause", methods=["POST", "PATCH"])
    def pause_schedule(schedule_id: str) -> Response:
        local.set_paused(schedule_id, True)
        return _empty()

    @app.route("/v2/schedules/<schedule_id>/resume", methods=["POST", "PATCH"])
    def resume_schedule(schedule_id: str) -> Response:
        local.set_paused(schedule_id, False)
        return _empty()

    @app.get("/v2/messages/<message_id>")
    def get_message(message_id: str) -> Response:
        return jsonify(local.get_message(message_id))

    @app.delete("/v2/messages/<message_id>")
    def cancel_message(message_id: str) -> Response:
        local.cancel_message(message_id)
        return _empty()

    @app.delete("/v2/messages/")
    @app.delete("/v2/schedules/")
    @app.delete("/v2/dlq/")
    def empty_id() -> Response:
        # `DELETE /v2/messages/` would reach the bulk endpoint and cancel everything.
        raise ApiError(400, "id must not be empty")

    @app.delete("/v2/messages")
    def cancel_messages() -> Response:
        ids = _json_list("messageIds")
        return jsonify(cancelled=local.cancel_messages(ids))

    @app.get("/v2/keys")
    def get_keys() -> Response:
        current, next_ = local.keys
        return jsonify(current=current, next=next_)

    @app.post("/v2/keys/rotate")
    def rotate_keys() -> Response:
        current, next_ = local.rotate_keys()
        return jsonify(current=current, next=next_)

    @app.get("/v2/dlq")
    def list_dlq() -> Response:
        entries = local.list_dlq(request.args.to_dict())
        count = request.args.get("count", type=int)
        if count is not None:
            entries = entries[: max(0, count)]
        return jsonify(messages=entries)

    @app.get("/v2/dlq/<dlq_id>")
    def get_dlq(dlq_id: str) -> Response:
        return jsonify(local.get_dlq(dlq_id))

    @app.delete("/v2/dlq/<dlq_id>")
    def delete_dlq(dlq_id: str) -> Response:
        if local.delete_dlq([dlq_id]) == 0:
            raise ApiError(404, f"dlq message {dlq_id!r} not found")
        return _empty()

    @app.delete("/v2/dlq")
    def delete_dlq_many() -> Response:
        ids = _json_list("dlqIds")
        if ids is None:
            raise ApiError(400, "dlqIds is required")
        return jsonify(deleted=local.delete_dlq(ids))

    return app


def _token() -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.args.get("qstash_token")


def _raw_destination(prefix: str, routed: str) -> str:
    # The routed value is percent-decoded; QStash keeps the destination exactly as sent, and
    # the signature's `sub` must match it character for character.
    raw = request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI")
    if isinstance(raw, str):
        path = raw.partition("?")[0]
        if path.startswith(prefix):
            return path[len(prefix) :]
    return routed


def _json_list(key: str) -> list[str] | None:
    data: Any = request.get_json(silent=True) if request.get_data() else None
    if data is None:
        return None
    values = data.get(key) if isinstance(data, dict) else None
    if values is None:
        return None
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ApiError(400, f"{key} must be a list of strings")
    return values


def _error(status: int, message: str) -> Response:
    response = jsonify(error=message)
    response.status_code = status
    return response


def _empty() -> Response:
    return Response(b"", status=200)


def _mimetype(body: str) -> str:
    try:
        json.loads(body)
    except ValueError:
        return "text/plain"
    return "application/json"
