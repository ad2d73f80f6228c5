from __future__ import annotations

import threading
import time
from pathlib import Path

from click.testing import Result
from flask import Flask
from qstash import QStash

from devtools.qstash_local import DEV_TOKEN, LocalQStash, RunningServer
from service.extensions import get_qstash
from tests.helpers import AppFactory

Local = tuple[LocalQStash, RunningServer]
OWNED = "eleva-jobs.development."


def invoke(app: Flask, *args: str) -> Result:
    return app.test_cli_runner().invoke(args=["qstash", *args])


def sdk(server: RunningServer) -> QStash:
    return QStash(DEV_TOKEN, base_url=server.url, retry=False)


def calls(local: LocalQStash) -> list[tuple[str, str]]:
    return list(local.api_calls)


def test_update_creates_every_schedule_as_declared(
    make_app: AppFactory, qstash_env: dict[str, str], local_qstash: Local
) -> None:
    local, server = local_qstash
    result = invoke(make_app(qstash_env), "update")
    assert result.exit_code == 0, result.output
    assert "created 3, updated 0, deleted 0, unchanged 0" in result.output
    assert [c[0] for c in calls(local)] == ["GET", "POST", "POST", "POST"]
    remote = {s.schedule_id: s for s in sdk(server).schedule.list()}
    assert set(remote) == {OWNED + n for n in
                           ("process-tasks", "process-expert-transfers", "check-upcoming-payouts")}
    s = remote[OWNED + "process-expert-transfers"]
    assert s.destination == "https://jobs.example.test/api/qstash"
    assert s.cron == "0 */2 * * *"
    assert s.body == '{"job":"process-expert-transfers"}'
    assert s.headers == {"X-Qstash-Target-Url": ["/api/cron/process-expert-transfers"],
                         "Content-Type": ["application/json"]}
    assert (s.method, s.retries, s.label) == ("POST", 3, "eleva-jobs-development")


def test_second_update_is_a_single_api_call(
    make_app: AppFactory, qstash_env: dict[str, str], local_qstash: Local
) -> None:
    local, _ = local_qstash
    app = make_app(qstash_env)
    assert invoke(app, "update").exit_code == 0
    before = len(calls(local))
    again = invoke(app, "update")
    assert again.exit_code == 0
    assert "unchanged 3" in again.output
    assert calls(local)[before:] == [("GET", "/v2/schedules")]


def test_dry_run_and_check_change_nothing(
    make_app: AppFactory, qstash_env: dict[str, str], local_qstash: Local
) -> None:
    local, server = local_qstash
    app = make_app(qstash_env)
    dry = invoke(app, "update", "--dry-run")
    assert dry.exit_code == 0
    assert dry.output.count("create ") == 3
    assert "dry run: nothing was changed" in dry.output
    check = invoke(app, "update", "--check")
    assert check.exit_code == 1
    assert "schedules differ" in check.output
    assert calls(local) == [("GET", "/v2/schedules")] * 2
    assert sdk(server).schedule.list() == []
    assert invoke(app, "update").exit_code == 0
    assert invoke(app, "update", "--check").exit_code == 0


def test_foreign_schedules_are_untouched_and_stale_owned_ones_deleted(
    make_app: AppFactory, qstash_env: dict[str, str], local_qstash: Local
) -> None:
    local, server = local_qstash
    client = sdk(server)
    for schedule_id in ("eleva-jobs.staging.process-tasks", "other-app.development.cleanup",
                        OWNED + "retired-job"):
        client.schedule.create(destination="https://elsewhere.example/hook", cron="0 1 * * *",
                               schedule_id=schedule_id, body="keep me")
    foreign_before = {s.schedule_id: s for s in client.schedule.list()
                      if not s.schedule_id.startswith(OWNED)}
    result = invoke(make_app(qstash_env), "update")
    assert result.exit_code == 0, result.output
    assert "deleted 1" in result.output
    assert "2 foreign schedule(s) left alone" in result.output
    after = {s.schedule_id: s for s in client.schedule.list()}
    assert OWNED + "retired-job" not in after
    for schedule_id, schedule in foreign_before.items():
        assert after[schedule_id] == schedule


def test_overrides_update_and_remove_schedules(
    make_app: AppFactory, qstash_env: dict[str, str], local_qstash: Local
) -> None:
    local, server = local_qstash
    assert invoke(make_app(qstash_env), "update").exit_code == 0
    before = len(calls(local))
    env = {**qstash_env, "JOB_PROCESS_TASKS_CRON": "CRON_TZ=Europe/Lisbon 30 3 * * *",
           "JOB_CHECK_UPCOMING_PAYOUTS_ENABLED": "false"}
    result = invoke(make_app(env), "update")
    assert result.exit_code == 0, result.output
    assert "updated 1, deleted 1, unchanged 1" in result.output
    assert [c[0] for c in calls(local)[before:]] == ["GET", "DELETE", "POST"]
    remote = {s.schedule_id: s for s in sdk(server).schedule.list()}
    assert remote[OWNED + "process-tasks"].cron == "CRON_TZ=Europe/Lisbon 30 3 * * *"
    assert OWNED + "check-upcoming-payouts" not in remote


def test_invalid_cron_fails_before_any_api_call(
    make_app: AppFactory, qstash_env: dict[str, str], local_qstash: Local
) -> None:
    local, _ = local_qstash
    result = invoke(make_app({**qstash_env, "JOB_PROCESS_TASKS_CRON": "0 4 * *"}), "update")
    assert result.exit_code == 1
    assert "job process-tasks: JOB_PROCESS_TASKS_CRON '0 4 * *' is invalid" in result.output
    assert calls(local) == []


def test_missing_configuration_names_the_variables(
    make_app: AppFactory, env: dict[str, str]
) -> None:
    del env["QSTASH_TOKEN"]
    del env["APP_URL"]
    result = invoke(make_app(env), "update")
    assert result.exit_code == 3
    [line] = [line for line in result.output.splitlines() if line.strip()]
    assert "APP_URL: missing" in line and "QSTASH_TOKEN: missing" in line


def test_rejected_token_fails_clearly(
    make_app: AppFactory, qstash_env: dict[str, str], local_qstash: Local, sleeps: list[float]
) -> None:
    result = invoke(make_app({**qstash_env, "QSTASH_TOKEN": "wrong-token"}), "update")
    assert result.exit_code == 1
    assert "QStash refused the token (HTTP 401)" in result.output
    assert "wrong-token" not in result.output
    assert sleeps == []


def test_rate_limit_is_waited_out(
    make_app: AppFactory, qstash_env: dict[str, str], local_qstash: Local, sleeps: list[float]
) -> None:
    local, server = local_qstash
    local.inject_api_failure(status=429, times=2, method="GET",
                             headers={"Burst-RateLimit-Limit": "1",
                                      "Burst-RateLimit-Remaining": "0",
                                      "Burst-RateLimit-Reset": str(int(time.time()) + 2)})
    result = invoke(make_app(qstash_env), "update")
    assert result.exit_code == 0, result.output
    assert len(sleeps) == 2 and all(0.2 <= s <= 3 for s in sleeps)
    assert len(sdk(server).schedule.list()) == 3


def test_persistent_server_errors_give_up_and_delete_nothing(
    make_app: AppFactory, qstash_env: dict[str, str], local_qstash: Local, sleeps: list[float]
) -> None:
    local, server = local_qstash
    sdk(server).schedule.create(destination="https://x.example/api/qstash", cron="0 1 * * *",
                                schedule_id=OWNED + "retired-job")
    local.inject_api_failure(status=500, times=5, method="GET")
    result = invoke(make_app(qstash_env), "update")
    assert result.exit_code == 1
    assert "list schedules: QStash answered HTTP 500" in result.output
    assert sleeps == [0.5, 1.0, 2.0, 4.0]
    assert [c[0] for c in calls(local)].count("DELETE") == 0
    assert [s["scheduleId"] for s in local.list_schedules()] == [OWNED + "retired-job"]


def test_unreachable_qstash_fails_within_bounds(
    make_app: AppFactory, qstash_env: dict[str, str], sleeps: list[float]
) -> None:
    result = invoke(make_app({**qstash_env, "QSTASH_URL": "http://127.0.0.1:9"}), "update")
    assert result.exit_code == 1
    assert "cannot reach QStash at http://127.0.0.1:9" in result.output
    assert len(sleeps) == 4


def test_concurrent_updates_end_in_the_same_state(
    make_app: AppFactory, qstash_env: dict[str, str], local_qstash: Local
) -> None:
    _, server = local_qstash
    apps = [make_app(qstash_env) for _ in range(3)]
    codes: list[int] = []
    threads = [threading.Thread(target=lambda a=a: codes.append(invoke(a, "update").exit_code))
               for a in apps]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert codes == [0, 0, 0]
    remote = sdk(server).schedule.list()
    assert sorted(s.schedule_id for s in remote) == sorted(
        OWNED + n for n in ("process-tasks", "process-expert-transfers", "check-upcoming-payouts"))
    assert invoke(apps[0], "update", "--check").exit_code == 0


def test_list_marks_owned_and_foreign(
    make_app: AppFactory, qstash_env: dict[str, str], local_qstash: Local
) -> None:
    _, server = local_qstash
    sdk(server).schedule.create(destination="https://x.example/h", cron="0 1 * * *",
                                schedule_id="other-app.production.cleanup")
    app = make_app(qstash_env)
    invoke(app, "update")
    result = invoke(app, "list")
    assert result.exit_code == 0
    lines = {line.split()[1]: line.split()[0] for line in result.output.splitlines()[1:]}
    assert lines == {"other-app.production.cleanup": "foreign",
                     OWNED + "check-upcoming-payouts": "owned",
                     OWNED + "process-expert-transfers": "owned",
                     OWNED + "process-tasks": "owned"}


def test_trigger_publishes_one_delivery_of_the_job(
    make_app: AppFactory, qstash_env: dict[str, str], local_qstash: Local
) -> None:
    local, _ = local_qstash
    result = invoke(make_app(qstash_env), "trigger", "process-tasks")
    assert result.exit_code == 0, result.output
    message_id = result.output.strip()
    message = local.get_message(message_id)
    assert message["url"] == "https://jobs.example.test/api/qstash"
    assert message["header"]["X-Qstash-Target-Url"] == ["/api/cron/process-tasks"]
    assert '"job":"process-tasks"' in message["body"]
    assert invoke(make_app(qstash_env), "trigger", "nope").exit_code == 1


def test_check_reports_ok_once_in_sync(
    make_app: AppFactory, qstash_env: dict[str, str], local_qstash: Local
) -> None:
    app = make_app(qstash_env)
    drift = invoke(app, "check")
    assert drift.exit_code == 1
    assert "status: degraded" in drift.output
    assert invoke(app, "update").exit_code == 0
    ok = invoke(app, "check")
    assert ok.exit_code == 0, ok.output
    assert "status: ok" in ok.output
    assert "schedules: in sync" in ok.output


def test_api_clients_are_bounded(make_app: AppFactory, qstash_env: dict[str, str],
                                 tmp_path: Path) -> None:
    app = make_app(qstash_env)
    assert get_qstash(app, probe=True).attempts == 1
    assert get_qstash(app).attempts == 5
