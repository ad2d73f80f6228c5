from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from werkzeug.test import TestResponse

from service.qstash.signature import qstash_claims, sign_claims
from tests.helpers import ADMIN_TOKEN, APP_URL, CURRENT_KEY, NEXT_KEY, RECEIVER_URL
from tests.probe_jobs import EXECUTIONS

pytestmark = pytest.mark.usefixtures("probes")

# `make reliability` raises this; the suite's default keeps CI in seconds.
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=False,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
DIRECT_URL = APP_URL + "/api/cron/probe"
LEEWAY = 30
METHODS = ["GET", "PUT", "PATCH", "DELETE", "OPTIONS"]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_jwt(claims: dict[str, Any], key: str, alg: str = "HS256") -> str:
    """Encode any claims, even ones a JWT library would refuse to produce."""
    header = b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    payload = b64(json.dumps(claims).encode())
    signing_input = f"{header}.{payload}".encode()
    digest = {"HS256": hashlib.sha256, "HS512": hashlib.sha512}.get(alg)
    signature = b64(hmac.new(key.encode(), signing_input, digest).digest()) if digest else ""
    return f"{header}.{payload}.{signature}"


def is_really_valid(token: str | None, body: bytes, url: str) -> bool:
    """An independent check of what the protocol calls a valid delivery token."""
    if not token:
        return False
    for key in (CURRENT_KEY, NEXT_KEY):
        try:
            claims = jwt.decode(token, key, algorithms=["HS256"], issuer="Upstash",
                                leeway=LEEWAY, options={"require": ["sub", "exp", "nbf", "body"]})
        except jwt.PyJWTError:
            continue
        digest = base64.urlsafe_b64encode(hashlib.sha256(body).digest()).rstrip(b"=").decode()
        return (claims.get("sub") == url and isinstance(claims.get("body"), str)
                and claims["body"].rstrip("=") == digest and not claims.get("aud"))
    return False


def check_response(response: TestResponse) -> None:
    data = response.get_json(silent=True) or {}
    event(f"{response.status_code} {data.get('error') or data.get('status', '')}".strip())
    assert response.status_code < 500, response.get_data(as_text=True)
    if not 200 <= response.status_code < 300:
        data = response.get_json(silent=True)
        assert isinstance(data, dict), response.get_data(as_text=True)
        assert isinstance(data.get("error"), str) and isinstance(data.get("message"), str)


def good_body(marker: Path) -> bytes:
    return json.dumps({"job": "probe", "marker": str(marker)}, separators=(",", ":")).encode()


claim_changes = st.dictionaries(
    st.sampled_from(["iss", "sub", "exp", "nbf", "iat", "jti", "body", "aud", "extra"]),
    st.one_of(st.none(), st.integers(-10**10, 10**10), st.text(max_size=40),
              st.booleans(), st.floats(allow_nan=False), st.lists(st.integers(), max_size=2)),
    max_size=3,
)
# Each mutation is left out most of the time, so that deep paths (targets, replays,
# duplicates) are reached as often as the signature checks.
keys = st.sampled_from([CURRENT_KEY] * 3 + [NEXT_KEY, "sig_WrongKeyWrongKeyWrongKeyWrong",
                        "sig_" + "a" * 60])
targets = st.one_of(
    st.sampled_from(["/api/cron/probe", "/api/cron/process-tasks", "/api/admin/job-runs",
                     "/api/qstash", "/api/cron/../admin/job-runs", "/api/cron%2Fprobe",
                     "https://evil.example/api/cron/probe", APP_URL + "/api/cron/probe", ""]),
    st.text(max_size=60),
)
message_ids = st.one_of(st.text(max_size=40), st.from_regex(r"msg_[A-Za-z0-9]{1,20}",
                                                           fullmatch=True))


@st.composite
def deliveries(draw: st.DrawFn, marker: Path) -> dict[str, Any]:
    """A delivery derived from a valid one by zero or more mutations."""
    body = good_body(marker)
    url = RECEIVER_URL
    claims = qstash_claims(url=url, body=body)
    for name, value in draw(st.one_of(st.just({}), claim_changes)).items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    token: str | None = raw_jwt(claims, draw(keys))
    token_mutation = draw(st.sampled_from(["keep"] * 8 + ["flip", "truncate", "garbage",
                                                          "drop", "alg_none", "hs512"]))
    if token_mutation == "flip" and token:
        i = draw(st.integers(0, len(token) - 1))
        token = token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1:]
    elif token_mutation == "truncate" and token:
        token = token[: draw(st.integers(0, len(token) - 1))]
    elif token_mutation == "garbage":
        token = draw(st.text(max_size=200))
    elif token_mutation == "drop":
        token = None
    elif token_mutation == "alg_none":
        token = raw_jwt(claims, "", alg="none")
    elif token_mutation == "hs512":
        token = raw_jwt(claims, CURRENT_KEY, alg="HS512")
    body_mutation = draw(st.sampled_from(["keep"] * 8 + ["append", "replace", "empty", "big"]))
    if body_mutation == "append":
        body += draw(st.binary(min_size=1, max_size=20))
    elif body_mutation == "replace":
        body = draw(st.binary(max_size=300))
    elif body_mutation == "empty":
        body = b""
    elif body_mutation == "big":
        body = b'{"pad":"' + b"x" * draw(st.integers(10_000, 1_200_000)) + b'"}'
    headers = {"Content-Type": draw(st.sampled_from(["application/json", "text/plain", ""]))}
    if token is not None:
        headers["Upstash-Signature"] = token
    if draw(st.booleans()):
        headers["Upstash-Message-Id"] = draw(message_ids)
    else:
        headers["Upstash-Message-Id"] = f"msg_{time.time_ns()}"
    if draw(st.booleans()):
        headers["X-Qstash-Target-Url"] = draw(targets)
    else:
        headers["X-Qstash-Target-Url"] = "/api/cron/probe"
    if draw(st.booleans()):
        headers["Upstash-Retried"] = draw(st.text(max_size=5))
    if draw(st.booleans()):
        headers["Authorization"] = draw(st.sampled_from(
            [f"Bearer {ADMIN_TOKEN}", "Bearer nope", "Basic abc", ""]))
    method = draw(st.sampled_from(["POST"] * 15 + METHODS))
    return {"method": method, "body": body, "headers": _printable(headers), "token": token}


def _printable(headers: dict[str, str]) -> dict[str, str]:
    # HTTP header values are Latin-1 without control characters; others never reach a server.
    return {k: v for k, v in headers.items()
            if all(32 <= ord(c) < 256 and c != "\x7f" for c in v)}


def send(client: FlaskClient, path: str, case: dict[str, Any]) -> TestResponse:
    """Send a drawn request; the probe must have run once for a fresh 2xx, else not at all."""
    before = len(EXECUTIONS)
    response = client.open(path, method=case["method"], data=case["body"],
                           headers=case["headers"])
    check_response(response)
    ran = len(EXECUTIONS) - before
    if 200 <= response.status_code < 300:
        assert ran == (0 if response.get_json()["duplicate"] else 1)
    else:
        assert ran == 0
    return response


@pytest.fixture
def fuzz_app(app: Flask, marker: Path) -> Flask:
    return app


@given(data=st.data())
@FUZZ
def test_receiver_runs_jobs_only_for_valid_signatures(
    data: st.DataObject, fuzz_app: Flask, marker: Path
) -> None:
    case = data.draw(deliveries(marker))
    response = send(fuzz_app.test_client(), "/api/qstash", case)
    if 200 <= response.status_code < 300:
        sent_token = case["headers"].get("Upstash-Signature")
        assert case["method"] == "POST"
        assert is_really_valid(sent_token, case["body"], RECEIVER_URL), case


@given(data=st.data())
@FUZZ
def test_direct_job_endpoint_needs_a_valid_signature_or_the_admin_token(
    data: st.DataObject, fuzz_app: Flask, marker: Path
) -> None:
    case = data.draw(deliveries(marker))
    # Re-sign for the direct endpoint's own URL half of the time.
    if data.draw(st.booleans()) and case["token"] is not None:
        case["headers"]["Upstash-Signature"] = sign_claims(
            qstash_claims(url=DIRECT_URL, body=case["body"]), data.draw(keys))
    response = send(fuzz_app.test_client(), "/api/cron/probe", case)
    if 200 <= response.status_code < 300:
        admin = case["headers"].get("Authorization") == f"Bearer {ADMIN_TOKEN}"
        assert admin or is_really_valid(case["headers"].get("Upstash-Signature"),
                                        case["body"], DIRECT_URL), case


@given(path=st.text(max_size=60), method=st.sampled_from(["GET", "POST", *METHODS]),
       body=st.binary(max_size=100))
@FUZZ
def test_any_route_answers_json_errors(fuzz_app: Flask, path: str, method: str,
                                       body: bytes) -> None:
    client = fuzz_app.test_client()
    response = client.open("/" + path.lstrip("/"), method=method, data=body)
    check_response(response)
    if response.status_code < 300:
        assert method == "GET" and response.request.path in ("/healthz", "/readyz")
