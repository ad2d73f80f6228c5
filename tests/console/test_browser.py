from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from playwright import sync_api

from devtools import devstack
from devtools.qstash_local import LocalQStash, LocalQStashConfig, serve
from tests.console.helpers import add_dead_letter
from tests.helpers import ROOT, free_port

SHOTS = ROOT / "tests" / "artifacts" / "console"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
JOBS = ("process-tasks", "check-upcoming-payouts", "process-expert-transfers")
WAIT_MS = 60_000



@pytest.fixture
def stack(database_url: str) -> Iterator[dict[str, Any]]:
    """The real stack as `make run` starts it: local QStash, migrations, demo data, gunicorn."""
    host, port, qstash_port = "127.0.0.1", free_port(), free_port()
    local = LocalQStash(LocalQStashConfig(backoff_scale=0.01))
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("QSTASH_", "APP_", "ADMIN_", "DATABASE_"))}
    env = devstack.stack_env({**base, "DATABASE_URL": database_url,
                              "ADMIN_API_TOKEN": "console-e2e-" + "x" * 20},
                             app_url=f"http://{host}:{port}",
                             qstash_url=f"http://{host}:{qstash_port}")
    local.start(interval=0.2)
    try:
        with serve(local, host=host, port=qstash_port):
            devstack.prepare(env)
            with devstack.service(env, host, port) as url:
                devstack.flask(env, "qstash", "update")
                yield {"url": url, "env": env, "local": local}
    finally:
        local.stop()


@pytest.fixture
def browser() -> Iterator[Any]:
    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail("Debian's chromium is not installed: run scripts/setup-test-tools.sh as root, "
                    "or apt-get install chromium")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


def shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def wait_for_succeeded_run(page: Any) -> str:
    """Follow the message page until it opens the run; return the run's URL."""
    page.wait_for_url(re.compile(r"/admin/runs/[0-9a-f]{32}$"), timeout=WAIT_MS)
    sync_api.expect(page.get_by_role("heading", level=1)).to_contain_text("succeeded")
    return str(page.url)


@pytest.mark.slow
def test_console_end_to_end(stack: dict[str, Any], browser: Any) -> None:
    url, token, local = stack["url"], stack["env"]["ADMIN_API_TOKEN"], stack["local"]
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    # A CSP violation or a broken asset shows up in the console: there must be none.
    page.on("console", lambda message: errors.append(message.text)
            if message.type == "error" else None)

    page.goto(url + "/admin/")
    assert page.url.endswith("/admin/sign-in")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    shot(page, "01-sign-in")
    page.get_by_label("Admin token").fill(token)
    page.keyboard.press("Enter")  # by keyboard: the form submits from its field
    page.wait_for_url(url + "/admin/")

    for job in JOBS:
        sync_api.expect(page.get_by_role("rowheader", name=job)).to_be_visible()
    sync_api.expect(page.get_by_role("heading", name=re.compile("^Health: "))).to_be_visible()
    shot(page, "02-overview")

    page.get_by_role("button", name="Run process-tasks now").click()
    sync_api.expect(page.get_by_text("Published process-tasks")).to_be_visible()
    run_url = wait_for_succeeded_run(page)
    shot(page, "03-run")

    page.get_by_role("link", name="Runs", exact=True).click()
    sync_api.expect(page.get_by_role("link", name=run_url.rsplit("/", 1)[1][:12])).to_be_visible()
    shot(page, "04-runs")

    page.goto(url + "/admin/jobs/process-tasks")
    sync_api.expect(page.locator("svg circle.mark-succeeded").first).to_be_attached()
    shot(page, "05-job")

    page.get_by_role("link", name="Payouts", exact=True).click()
    approver = page.get_by_label("Approved by").first
    approver.fill("Rita (ops)")
    shot(page, "06-payouts")
    page.get_by_role("button", name=re.compile(r"^Approve #\d+$")).first.click()
    sync_api.expect(page.get_by_text("approved by Rita (ops)").first).to_be_visible()
    shot(page, "07-transfer")
    transfer_url = page.url

    # The approved transfer is paid by the next transfer run, whatever its date.
    for job in ("process-expert-transfers", "check-upcoming-payouts"):
        page.get_by_role("link", name="Overview").click()
        page.get_by_role("button", name=f"Run {job} now").click()
        wait_for_succeeded_run(page)
    page.goto(transfer_url)
    sync_api.expect(page.get_by_role("heading", level=1)).to_contain_text("COMPLETED")

    dlq_id = add_dead_letter(local, url=url + "/api/qstash",
                             answer=b'{"error":"job_failed","message":"boom"}')
    page.get_by_role("link", name="Dead letters").click()
    sync_api.expect(page.get_by_text(dlq_id)).to_be_visible()
    shot(page, "08-dead-letters")
    page.get_by_role("row", name=re.compile(dlq_id)).get_by_role(
        "button", name=re.compile("^Retry")).click()
    wait_for_succeeded_run(page)
    assert dlq_id not in local.dlq

    page.get_by_role("link", name="Schedules").click()
    sync_api.expect(page.get_by_text("Everything is in sync")).to_be_visible()
    shot(page, "09-schedules")

    page.get_by_role("link", name="Overview").click()
    for job in JOBS:
        row = page.get_by_role("row", name=re.compile(f"^{job} "))
        sync_api.expect(row.get_by_text("succeeded")).to_be_visible()
    shot(page, "10-overview-after-runs")
    page.get_by_role("link", name="Runs", exact=True).click()
    sync_api.expect(page.get_by_role("rowheader")).to_have_count(4)
    shot(page, "11-runs-after-runs")

    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(url + "/admin/sign-in")
    page.goto(url + "/admin/runs")
    assert page.url.endswith("/admin/sign-in")
    assert errors == []
    context.close()
