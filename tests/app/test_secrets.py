from __future__ import annotations

import hmac
import io
from collections.abc import Iterator

import pytest
from flask import Flask
from pytest_mock import MockerFixture

from devtools.qstash_local import LocalQStash, LocalQStashConfig, serve
from service.qstash.signature import body_hash, qstash_claims, sign_claims
from tests.helpers import APP_URL, RECEIVER_URL, AppFactory, delivery_headers, job_body, service_log

pytestmark = pytest.mark.usefixtures("probes")

SECRETS = {
    "ADMIN_API_TOKEN": "adm-Zq8rT1vXwY2kLmN3pQ4sU5",
    "QSTASH_TOKEN": "qst-Hh7gF6dD5sA4pO3iU2yT1r",
    "QSTASH_CURRENT_SIGNING_KEY": "sig_CurrentSecretCurrentSecret01",
    "QSTASH_NEXT_SIGNING_KEY": "sig_NextSecretNextSecretNextSe02",
    "METRICS_TOKEN": "met-Pp9oO8iI7uU6yY5tT4rR3e",
}


@pytest.fixture
def secret_app(make_app: AppFactory, env: dict[str, str], captured: io.StringIO
               ) -> Iterator[tuple[Flask, LocalQStash]]:
    local = LocalQStash(LocalQStashConfig(token=SECRETS["QSTASH_TOKEN"],
                                          allow_remote_destinations=True))
    with serve(local) as server:
        app = make_app({**env, **SECRETS, "QSTASH_URL": server.url})
        service_log(captured)
        yield app, local


def test_no_secret_reaches_a_log_line_or_a_response(
    secret_app: tuple[Flask, LocalQStash], captured: io.StringIO, marker: object
) -> None:
    app, local = secret_app
    client = app.test_client()
    runner = app.test_cli_runner()
    key = SECRETS["QSTASH_CURRENT_SIGNING_KEY"]
    admin = {"Authorization": f"Bearer {SECRETS['ADMIN_API_TOKEN']}"}
    body = job_body("probe")
    good = delivery_headers(body, target="/api/cron/probe", key=key)
    forged_token = sign_claims(qstash_claims(url=APP_URL + "/elsewhere", body=body), key)
    seen: list[str] = []

    def post(headers: dict[str, str], data: bytes = body, path: str = "/api/qstash") -> None:
        seen.append(client.post(path, data=data, headers=headers).get_data(as_text=True))

    post(good)
    post(good)  # duplicate
    post({**good, "Upstash-Signature": forged_token})
    post({**good, "Upstash-Signature": good["Upstash-Signature"] + "x"})
    post({**good, "Upstash-Message-Id": "msg_2"}, data=body + b" ")
    post({**delivery_headers(job_body("probe", action="crash"), target="/api/cron/probe",
                             key=key)}, data=job_body("probe", action="crash"))
    post({**good, "Authorization": "Bearer " + SECRETS["ADMIN_API_TOKEN"][:-1]},
         path="/api/cron/probe")
    post(admin, path="/api/cron/process-tasks")
    scrape = {"Authorization": f"Bearer {SECRETS['METRICS_TOKEN']}"}
    seen.append(client.get("/metrics", headers=scrape).get_data(as_text=True))
    for path in ("/api/admin/job-runs", "/api/admin/qstash-health", "/readyz", "/nope",
                 "/metrics"):
        seen.append(client.get(path, headers=admin).get_data(as_text=True))
        seen.append(client.get(path, headers={"Authorization": "Bearer wrong"})
                    .get_data(as_text=True))
    for args in (["qstash", "update"], ["qstash", "list"], ["qstash", "check", "--json"],
                 ["jobs", "list"]):
        seen.append(runner.invoke(args=args).output)
    local.inject_api_failure(status=401, times=5)
    seen.append(runner.invoke(args=["qstash", "update"]).output)
    seen.append(repr(app.extensions["eleva"]))

    everything = captured.getvalue() + "\n".join(seen)
    assert "run succeeded" in everything and "rejected request" in everything
    assert RECEIVER_URL in everything or "created 3" in everything
    for name, value in SECRETS.items():
        assert value not in everything, f"{name} leaked"
    for token in (good["Upstash-Signature"], forged_token):
        assert token.split(".")[2] not in everything


def test_an_exception_quoting_secrets_leaves_them_out_of_logs_and_the_run_record(
    secret_app: tuple[Flask, LocalQStash], captured: io.StringIO
) -> None:
    # A library's exception may quote what it was given: a token, a key, a credential.
    app, _ = secret_app
    stripe_key = "sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc"
    quoted = (f"refused token {SECRETS['QSTASH_TOKEN']} and key "
              f"{SECRETS['QSTASH_NEXT_SIGNING_KEY']!r} (\"{SECRETS['ADMIN_API_TOKEN']}\"); "
              f"Authorization: Bearer {stripe_key}")
    admin = {"Authorization": f"Bearer {SECRETS['ADMIN_API_TOKEN']}"}
    client = app.test_client()

    answer = client.post("/api/cron/probe", headers=admin,
                         data=job_body("probe", action="crash", message=quoted))
    [run] = client.get("/api/admin/job-runs?job=probe", headers=admin).get_json()["runs"]

    assert answer.status_code == 500 and answer.get_json()["error"] == "job_failed"
    assert run["status"] == "failed"
    assert run["error"] == ("RuntimeError: refused token [redacted] and key '[redacted]' "
                            '("[redacted]"); Authorization: Bearer [redacted]')
    logged = captured.getvalue()
    assert "run crashed" in logged and "refused token [redacted]" in logged
    for value in (*SECRETS.values(), stripe_key):
        assert value not in logged and value not in answer.get_data(as_text=True)


def test_secret_comparisons_are_constant_time(
    secret_app: tuple[Flask, LocalQStash], mocker: MockerFixture
) -> None:
    app, _ = secret_app
    spy = mocker.spy(hmac, "compare_digest")
    client = app.test_client()
    client.get("/api/admin/job-runs", headers={"Authorization": "Bearer guess"})
    assert (b"guess", SECRETS["ADMIN_API_TOKEN"].encode()) in [c.args for c in spy.call_args_list]
    spy.reset_mock()
    client.get("/metrics", headers={"Authorization": "Bearer guess"})
    assert (b"guess", SECRETS["METRICS_TOKEN"].encode()) in [c.args for c in spy.call_args_list]
    spy.reset_mock()
    body = job_body("probe")
    client.post("/api/qstash", data=body, headers=delivery_headers(
        body, target="/api/cron/probe", key=SECRETS["QSTASH_CURRENT_SIGNING_KEY"]))
    compared = [c.args for c in spy.call_args_list]
    assert (RECEIVER_URL.encode(), RECEIVER_URL.encode()) in compared  # the subject
    assert (body_hash(body).encode(), body_hash(body).encode()) in compared  # the body hash
