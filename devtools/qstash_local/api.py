from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from .filters import (
    DLQ_FILTERS,
    EVENT_FILTERS,
    MESSAGE_FILTERS,
    multi_values,
    page_size,
    parse_filters,
)
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
    def cancel_message(message_id: str) -> tuple[Response, int]:
        local.cancel_message(message_id)
        # The real API answers JSON, which the JavaScript SDK parses.
        return jsonify(cancelled=1), 202

    @app.delete("/v2/messages/")
    @app.delete("/v2/schedules/")
    @app.delete("/v2/dlq/")
    def empty_id() -> Response:
        # `DELETE /v2/messages/` would reach the bulk endpoint and cancel everything.
        raise ApiError(400, "id must not be empty")

    @app.delete("/v2/messages")
    def cancel_messages() -> tuple[Response, int]:
        # The JavaScript SDK sends ids and filters as query parameters, the Python SDK a JSON
        # body; with neither, every pending message is cancelled, as in QStash.
        ids = _id_list("messageIds")
        if ids is not None:
            return jsonify(cancelled=local.cancel_messages(ids)), 202
        where = parse_filters(request.args, allowed=MESSAGE_FILTERS)
        return jsonify(cancelled=local.cancel_messages(where=where)), 202

    @app.get("/v2/keys")
    def get_keys() -> Response:
        current, next_ = local.keys
        return jsonify(current=current, next=next_)

    @app.post("/v2/keys/rotate")
    def rotate_keys() -> Response:
        current, next_ = local.rotate_keys()
        return jsonify(current=current, next=next_)

    # The SDKs list logs from /v2/events; the API reference documents /v2/logs.
    @app.get("/v2/events", defaults={"key": "events"})
    @app.get("/v2/logs", defaults={"key": "logs"})
    def list_events(key: str) -> Response:
        ids = _id_list("messageIds", body=False)
        where = parse_filters(
            request.args, allowed=EVENT_FILTERS, ignore=("messageIds",), time_key="time"
        )
        events, cursor = local.list_events(
            message_ids=ids,
            where=where,
            count=page_size(request.args, default=100, maximum=1000),
            cursor=request.args.get("cursor") or None,
        )
        return jsonify(_with_cursor({key: events}, cursor))

    @app.get("/v2/dlq")
    def list_dlq() -> Response:
        ids = _id_list("dlqIds", body=False)
        where = None if ids is not None else parse_filters(request.args, allowed=DLQ_FILTERS)
        entries, cursor = local.list_dlq(
            dlq_ids=ids,
            where=where,
            count=page_size(request.args, default=100, maximum=100),
            cursor=request.args.get("cursor") or None,
        )
        return jsonify(_with_cursor({"messages": entries}, cursor))

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
        ids = _id_list("dlqIds")
        if ids is not None:
            return jsonify(deleted=local.delete_dlq(ids))
        where = parse_filters(request.args, allowed=DLQ_FILTERS)
        deleted, cursor = local.delete_dlq_where(
            where, count=page_size(request.args, default=100, maximum=100)
        )
        return jsonify(_with_cursor({"deleted": deleted}, cursor))

    @app.post("/v2/dlq/retry/<dlq_id>")
    def retry_dlq(dlq_id: str) -> tuple[Response, int]:
        (message_id,), _ = local.retry_dlq([dlq_id], headers=request.headers)
        return jsonify(messageId=message_id), 201

    @app.post("/v2/dlq/retry")
    def retry_dlq_many() -> tuple[Response, int]:
        ids = _id_list("dlqIds")
        where = None if ids is not None else parse_filters(request.args, allowed=DLQ_FILTERS)
        message_ids, cursor = local.retry_dlq(
            ids,
            where=where,
            count=page_size(request.args, default=100, maximum=100),
            headers=request.headers,
        )
        responses = [{"messageId": m} for m in message_ids]
        return jsonify(_with_cursor({"responses": responses}, cursor)), 201

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


def _id_list(key: str, *, body: bool = True) -> list[str] | None:
    """Return ids given as query parameters (repeated or comma-separated) or in a JSON body."""
    given = multi_values(request.args, key)
    if given is not None:
        return given
    if not body or not request.get_data():
        return None
    data: Any = request.get_json(silent=True)
    values = data.get(key) if isinstance(data, dict) else None
    if values is None:
        return None
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ApiError(400, f"{key} must be a list of strings")
    return values


def _with_cursor(data: dict[str, Any], cursor: str | None) -> dict[str, Any]:
    # Without a cursor the listing is complete; the SDKs loop while one is returned.
    if cursor is not None:
        data["cursor"] = cursor
    return data


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
