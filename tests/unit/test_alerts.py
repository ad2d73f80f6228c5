from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.helpers import ROOT

PROMETHEUS = ROOT / "deploy" / "prometheus"
MISSING = ("promtool is missing: install Debian's `prometheus` package (`sudo apt-get install "
           "prometheus`, which ships promtool), or run scripts/setup-test-tools.sh as root")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail(MISSING)
    return subprocess.run([found, *args], cwd=PROMETHEUS, capture_output=True, text=True,
                          timeout=120, check=False)


def test_the_alert_rules_are_valid() -> None:
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_each_alert_fires_when_it_should_and_only_then() -> None:
    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_tested_and_says_what_to_do() -> None:
    rules = (PROMETHEUS / "alerts.yml").read_text()
    tests = (PROMETHEUS / "alerts_test.yml").read_text()
    names = [line.split(":", 1)[1].strip() for line in rules.splitlines()
             if line.strip().startswith("- alert:")]
    assert len(names) == 8
    for name in names:
        assert f"alertname: {name}" in tests, name
    assert rules.count("summary:") == rules.count("description:") == len(names)
    assert rules.count("README.md, Monitoring > Alerts") == len(names)
