from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT


@pytest.mark.slow
def test_quick_load_run_is_correct(tmp_path: Path) -> None:
    """The short version of `make bench` and `make reliability` on SQLite stays correct."""
    if shutil.which("wrk") is None:
        pytest.fail("wrk is not installed; install the Debian package: apt-get install -y wrk")
    output = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.load.run_load", "--quick", "--database", "sqlite",
         "--output", str(output)],
        cwd=ROOT,
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(output.read_text())
    assert report["mode"] == "quick"
    result = report["results"]["sqlite"]

    load = result["load"]
    assert load["bare"]["errors"] == 0
    assert load["deliveries"]["errors"] == 0
    assert load["deliveries"]["statuses"] == {"200": load["deliveries"]["ok_2xx"]}
    ledger = load["ledger"]
    # Every answered delivery has its run; the rest were in flight when wrk stopped.
    assert ledger["ok_2xx"] > 0
    assert ledger["ok_2xx"] <= ledger["runs_total"] <= ledger["sent"]
    assert set(ledger["runs"]) <= {"succeeded", "skipped"}

    storm = result["storm"]
    assert storm["deliveries"] == 1000
    assert storm["outcomes"]["ran"] == 1
    assert set(storm["outcomes"]) <= {"ran", "duplicate", "in_progress"}
    assert storm["runs"] == {"succeeded": 1}
    assert storm["executions"] == 1

    memory = result["memory"]
    assert memory["deliveries"] >= memory["target"]
    assert memory["errors"] == 0
    assert not memory["workers_restarted"]
    assert len(memory["growth_mb"]) == 4
    assert all(rss > 0 for rss in memory["samples"][-1]["rss_mb"].values())
    assert memory["ledger"]["consistent"]

    assert result["log_problems"] == 0
    assert all(check["passed"] for check in result["checks"] if check["enforced"])
