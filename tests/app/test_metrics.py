from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from service.errors import ConfigurationError
from service.settings import Settings
from tests.helpers import (
    ADMIN_TOKEN,
    ROOT,
    AppFactory,
    add_expert,
    add_transfer,
    delivery_headers,
    job_body,
    mint,
)

TOKEN = "metrics-token-for-tests-9f8e7d6c"
SCRAPE = {"Authorization": f"Bearer {TOKEN}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
Samples = dict[str, list[tuple[dict[str, str], float]]]

# Every label the service exports, and the values it may take. Job names and the delivery
# endpoints come from code (the counters live as long as the test process, so jobs that other
# tests register appear too: a job's name, never a request's); `reason` from the error codes
# the service answers with.
JOB = r"[a-z][a-z0-9-]{0,63}"
ALLOWED: dict[str, Any] = {
    "endpoint": re.compile(rf"/api/qstash|/api/cron/{JOB}"),
    "outcome": {"succeeded", "duplicate", "skipped", "job_busy", "rejected", "non_retryable",
                "unavailable", "failed", "ok", "not_found", "rate_limited", "unknown",
                "transient", "permanent", "error", "sent", "retryable", "refused",
                "server_error", "unreachable"},
    "reason": re.compile(r"|[a-z][a-z0-9_]{0,39}"),
    "result": {"accepted", "rejected"},
    "job_name": re.compile(JOB),
    "status": {"succeeded", "failed", "skipped", "PENDING", "PROCESSING", "FAILED"},
    "operation": {"create_transfer", "find_transfer", "payment_state", "list_schedules",
                  "upsert_schedule", "delete_schedule", "publish", "other"},
    "currency": re.compile(r"[a-z]{3}|other"),
    "channel": {"log", "smtp", "other"},
    "kind": {"upcoming_payout", "payout_sent", "payout_failed", "other"},
    "source": {"sync", "check"},
    "le": re.compile(r"[0-9.e+-]+|\+Inf"),
    "version": re.compile(r"[0-9][0-9A-Za-z.+-]*|unknown"),
    "app_env": {"development", "staging", "production"},
    "service": re.compile(r"[A-Za-z0-9_-]+"),
}


@pytest.fixture
def metrics_env(qstash_env: dict[str, str]) -> dict[str, str]:
    return {**qstash_env, "METRICS_TOKEN": TOKEN}


@pytest.fixture
def metrics_app(make_app: AppFactory, metrics_env: dict[str, str]) -> Flask:
    return make_app(metrics_env)


def scrape(client: FlaskClient) -> tuple[Samples, set[str]]:
    """Scrape /metrics; return samples by name, and the family names."""
    response = client.get("/metrics", headers=SCRAPE)
    assert response.status_code == 200, response.text
    assert response.content_type.startswith("text/plain")
    samples: Samples = {}
    families = set()
    for family in text_string_to_metric_families(response.text):
        families.add(family.name)
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return samples, families


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample's value, 0 when absent (a counter not yet incremented)."""
    for found, number in samples.get(name, []):
        if all(found.get(k) == v for k, v in labels.items()):
            return number
    return 0.0


def test_metrics_are_off_without_a_token(client: FlaskClient) -> None:
    response = client.get("/metrics")
    assert response.status_code == 404
    assert response.json is not None and response.json["error"] == "metrics_disabled"


@pytest.mark.parametrize("header", [None, "Bearer wrong", f"Basic {TOKEN}", ADMIN["Authorization"]])
def test_metrics_need_the_bearer_token(metrics_app: Flask, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    response = metrics_app.test_client().get("/metrics", headers=headers)
    assert response.status_code == 401
    assert response.json is not None and response.json["error"] == "unauthorized"
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_deliveries_are_counted_by_endpoint_outcome_and_reason(metrics_app: Flask) -> None:
    client = metrics_app.test_client()
    before, _ = scrape(client)
    body = job_body("process-tasks")
    headers = delivery_headers(body, message_id="msg_metrics_1")
    assert client.post("/api/qstash", data=body, headers=headers).status_code == 200
    again = client.post("/api/qstash", data=body, headers=headers).get_json()
    assert again["duplicate"] is True
    forged = client.post("/api/qstash", data=body + b" ", headers=delivery_headers(body))
    assert forged.status_code == 401
    unknown = client.post("/api/qstash", data=body,
                          headers=delivery_headers(body, target="/api/cron/nope"))
    assert unknown.status_code == 489
    direct = job_body("process-tasks")
    signed = {**delivery_headers(direct, target=None),
              "Upstash-Signature": mint(direct, url="https://jobs.example.test/api/cron/"
                                                    "process-tasks")}
    assert client.post("/api/cron/process-tasks", data=direct, headers=signed).status_code == 200
    assert client.post("/api/cron/process-tasks", headers=ADMIN).status_code == 200
    client.post("/api/cron/process-tasks", headers={"Authorization": "Bearer guess"})
    after, _ = scrape(client)

    def delta(**labels: str) -> float:
        return (value(after, "eleva_deliveries_total", **labels)
                - value(before, "eleva_deliveries_total", **labels))

    receiver = {"endpoint": "/api/qstash"}
    direct_path = {"endpoint": "/api/cron/process-tasks"}
    assert delta(**receiver, outcome="succeeded", reason="") == 1
    assert delta(**receiver, outcome="duplicate", reason="") == 1
    assert delta(**receiver, outcome="rejected", reason="body_mismatch") == 1
    assert delta(**receiver, outcome="non_retryable", reason="unknown_target") == 1
    assert delta(**direct_path, outcome="succeeded", reason="") == 2
    assert delta(**direct_path, outcome="rejected", reason="invalid_token") == 1
    accepted = ("eleva_delivery_verification_seconds_count", {"result": "accepted"})
    rejected = ("eleva_delivery_verification_seconds_count", {"result": "rejected"})
    for (name, labels), expected in ((accepted, 4), (rejected, 1)):
        assert value(after, name, **labels) - value(before, name, **labels) == expected


def test_runs_are_counted_timed_and_read_back_from_the_ledger(metrics_app: Flask) -> None:
    client = metrics_app.test_client()
    before, _ = scrape(client)
    assert client.post("/api/cron/process-tasks", headers=ADMIN).status_code == 200
    after, _ = scrape(client)
    job = {"job_name": "process-tasks"}
    assert (value(after, "eleva_job_runs_total", **job, status="succeeded")
            - value(before, "eleva_job_runs_total", **job, status="succeeded")) == 1
    assert (value(after, "eleva_job_run_duration_seconds_count", **job)
            - value(before, "eleva_job_run_duration_seconds_count", **job)) == 1
    assert value(after, "eleva_job_runs_in_progress", **job) == 0
    assert value(after, "eleva_job_consecutive_failures", **job) == 0
    assert value(after, "eleva_job_last_success_timestamp_seconds", **job) > 1.7e9
    assert value(after, "eleva_job_overdue", **job) == 0
    assert value(after, "eleva_database_up") == 1
    assert value(after, "eleva_qstash_up") == 1
    # The local QStash server has no schedules: not in sync.
    assert value(after, "eleva_schedules_in_sync") == 0
    build = after["eleva_build_info"][0][0]
    assert (build["app_env"], build["service"]) == ("development", "eleva-jobs")


def test_payouts_and_notices_are_measured(metrics_app: Flask) -> None:
    client = metrics_app.test_client()
    add_expert(metrics_app)
    add_transfer(metrics_app, amount=8500, currency="eur")
    add_transfer(metrics_app, amount=1000, currency="eur", due=timedelta(days=5))
    before, _ = scrape(client)
    assert value(before, "eleva_payouts_transfers", status="PENDING") == 2
    response = client.post("/api/cron/process-expert-transfers", headers=ADMIN)
    assert response.status_code == 200, response.text
    after, _ = scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("eleva_payouts_paid_minor_units_total", currency="eur") == 8500
    assert delta("eleva_payout_provider_calls_total", operation="create_transfer",
                 outcome="ok") == 1
    assert delta("eleva_payout_provider_call_duration_seconds_count",
                 operation="create_transfer") == 1
    assert delta("eleva_notice_sends_total", channel="log", kind="payout_sent",
                 outcome="sent") == 1
    assert value(after, "eleva_payouts_transfers", status="PENDING") == 1
    assert value(after, "eleva_payouts_outcome_unknown") == 0
    assert value(after, "eleva_notices", kind="payout_sent", status="PENDING") == 0


def test_labels_come_from_fixed_sets_and_no_secret_is_exported(
        metrics_app: Flask, metrics_env: dict[str, str]) -> None:
    client = metrics_app.test_client()
    add_expert(metrics_app, "exp_secretive", email="someone.private@example.com")
    add_transfer(metrics_app, expert_id="exp_secretive")
    client.post("/api/cron/process-expert-transfers", headers=ADMIN)
    for target in ("/api/cron/process-tasks", "https://evil.example/x", "/api/cron/../admin",
                   "/api/cron/" + "a" * 300):
        body = job_body("process-tasks")
        client.post("/api/qstash", data=body,
                    headers=delivery_headers(body, target=target, message_id="msg_unique_42"))
    client.post("/api/qstash?x=1", data=b"{}", headers={"Upstash-Signature": "x.y.z"})
    client.post("/api/cron/unknown-job-" + "b" * 50, headers=ADMIN)
    text = client.get("/metrics", headers=SCRAPE).text
    secrets = [metrics_env[name] for name in ("QSTASH_TOKEN", "QSTASH_CURRENT_SIGNING_KEY",
                                              "QSTASH_NEXT_SIGNING_KEY", "ADMIN_API_TOKEN",
                                              "METRICS_TOKEN")]
    for unwanted in [*secrets, "msg_unique_42", "exp_secretive", "someone.private", "evil",
                     "unknown-job", "a" * 50, "jobs.example.test", "127.0.0.1"]:
        assert unwanted not in text
    for family in text_string_to_metric_families(text):
        assert family.name.startswith("eleva_"), family.name
        for sample in family.samples:
            # Prometheus sets `job` itself (the scrape job); a job's name is `job_name`.
            assert "job" not in sample.labels, sample
            for label, found in sample.labels.items():
                allowed = ALLOWED[label]
                ok = (allowed.fullmatch(found) if isinstance(allowed, re.Pattern)
                      else found in allowed)
                assert ok, (sample.name, label, found)


def test_schedule_sync_is_recorded(make_app: AppFactory, metrics_env: dict[str, str]) -> None:
    app = make_app(metrics_env)
    result = app.test_cli_runner().invoke(args=["qstash", "update"])
    assert result.exit_code == 0, result.output
    client = app.test_client()
    samples, _ = scrape(client)
    assert value(samples, "eleva_schedules_last_in_sync_timestamp_seconds", source="sync") > 1.7e9
    assert value(samples, "eleva_qstash_api_calls_total", operation="upsert_schedule",
                 outcome="ok") >= 3
    assert value(samples, "eleva_qstash_api_calls_total", operation="list_schedules",
                 outcome="ok") >= 1


def test_an_unreachable_database_reads_as_down(make_app: AppFactory,
                                                metrics_env: dict[str, str],
                                                tmp_path: Path) -> None:
    app = make_app({**metrics_env, "DATABASE_URL": f"sqlite:///{tmp_path}/no/such/dir/x.db"},
                   migrate=False)
    samples, _ = scrape(app.test_client())
    assert value(samples, "eleva_database_up") == 0
    assert samples["eleva_build_info"]


def test_the_metrics_token_is_a_secret() -> None:
    settings = Settings.from_env({"METRICS_TOKEN": TOKEN})
    assert TOKEN not in repr(settings)
    assert TOKEN not in settings.scrub(f"Authorization: Bearer {TOKEN}; token={TOKEN}")


def test_a_multiprocess_directory_must_be_usable_and_in_the_environment(
        make_app: AppFactory, metrics_env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ConfigurationError, match="PROMETHEUS_MULTIPROC_DIR is not a writable"):
        make_app({**metrics_env, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "a-file")})
    # This process imported prometheus-client without it: its values live in memory.
    with pytest.raises(ConfigurationError, match="process environment"):
        make_app({**metrics_env, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})


def test_every_metric_the_dashboard_queries_is_exported(metrics_app: Flask) -> None:
    dashboard = json.loads((ROOT / "deploy/grafana/eleva-jobs.json").read_text())
    queries = [target["expr"] for panel in dashboard["panels"]
               for target in panel.get("targets", [])]
    assert queries, "the dashboard has no queries"
    _, families = scrape(metrics_app.test_client())
    used = {re.sub(r"_(bucket|sum|count|total)$", "", name)
            for query in queries for name in re.findall(r"\beleva_[a-z0-9_]+", query)}
    assert used - families == set()


def test_every_metric_the_alerts_use_is_exported(metrics_app: Flask) -> None:
    rules = (ROOT / "deploy/prometheus/alerts.yml").read_text()
    _, families = scrape(metrics_app.test_client())
    used = {re.sub(r"_(bucket|sum|count|total)$", "", name)
            for name in re.findall(r"\beleva_[a-z0-9_]+", rules)}
    assert used and used - families == set()
