from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import requests

from tests.helpers import ROOT, free_port

LINK_RE = re.compile(r"sign in once, within 10 minutes: (http://\S+)")


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_make_run_prints_the_console_and_a_one_time_link(database_url: str,
                                                         stop: signal.Signals) -> None:
    port, qstash_port = free_port(), free_port()
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("ADMIN_")}
    run_env.update({"DATABASE_URL": database_url, "FLASK_SKIP_DOTENV": "1", "PORT": str(port),
                    "QSTASH_DEV_PORT": str(qstash_port)})
    process = subprocess.Popen([sys.executable, "-u", "-m", "devtools.devstack", "run"], cwd=ROOT,
                               env=run_env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               text=True)
    lines: list[str] = []
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 120
        link = None
        while link is None and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if found := LINK_RE.search(line):
                link = found.group(1)
        assert link is not None, "".join(lines)[-3000:]
        assert f"console        http://127.0.0.1:{port}/admin/" in "".join(lines)
        with requests.Session() as browser:
            first = browser.get(link, timeout=30)
            assert first.status_code == 200 and first.url.endswith("/admin/")
            assert "process-expert-transfers" in first.text
        again = requests.get(link, timeout=30)
        assert again.status_code == 401  # the link works once
    finally:
        process.send_signal(stop)
        process.wait(timeout=60)
        if process.stdout is not None:
            process.stdout.close()
    # The stack stopped its servers on the way out.
    for address in (f"http://127.0.0.1:{port}/healthz", f"http://127.0.0.1:{qstash_port}/"):
        with pytest.raises(requests.ConnectionError):
            requests.get(address, timeout=5)
