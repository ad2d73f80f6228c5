from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import ROOT

SCRIPT = ROOT / "scripts" / "setup-test-tools.sh"
URL = "postgresql://postgres@127.0.0.1:5432/test"
# The commands the script makes sure of, and the Debian package of each.
PACKAGES = {"wrk": "wrk", "openssl": "openssl", "chromium": "chromium", "promtool": "prometheus"}
TOOLS = tuple(PACKAGES)


class Machine:
    """A PATH of stand-ins for the system commands the script may call; each logs its call."""

    def __init__(self, folder: Path) -> None:
        self.bin = folder / "bin"
        self.bin.mkdir()
        self.calls = folder / "calls"
        self.calls.touch()
        for tool in ("sed", "sleep", "cat", "printf", "touch"):
            real = shutil.which(tool)
            if real:
                (self.bin / tool).symlink_to(real)

    def fake(self, name: str, script: str = "exit 0") -> None:
        path = self.bin / name
        path.write_text(f'#!/bin/sh\necho "{name} $*" >> "{self.calls}"\n{script}\n')
        path.chmod(0o755)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        bash = shutil.which("bash")
        assert bash is not None
        return subprocess.run([bash, str(SCRIPT), *args], capture_output=True, text=True,
                              env={"PATH": str(self.bin), "HOME": os.environ.get("HOME", "/")},
                              timeout=60, check=False)

    def logged(self) -> list[str]:
        return self.calls.read_text().splitlines()


@pytest.fixture
def machine(tmp_path: Path) -> Machine:
    machine = Machine(tmp_path)
    machine.fake("apt-get")
    return machine


def test_make_test_sets_up_before_anything_runs() -> None:
    planned = subprocess.run(["make", "--no-print-directory", "-n", "test"], cwd=ROOT,
                             capture_output=True, text=True,
                             check=True).stdout.splitlines()
    assert planned[0] == "scripts/setup-test-tools.sh"
    assert planned[1].startswith("scripts/setup-test-tools.sh ")
    ci = (ROOT / ".ci" / "run").read_text()
    # CI needs nothing that `make test` does not provide itself.
    assert "apt-get" not in ci and "pg_ctlcluster" not in ci


def test_without_root_it_names_what_to_install_and_installs_nothing(machine: Machine) -> None:
    machine.fake("id", "echo 1000")
    for tool in TOOLS[1:]:
        machine.fake(tool)
    done = machine.run()
    assert done.returncode == 1
    assert "sudo apt-get install wrk" in done.stderr
    assert not [call for call in machine.logged() if call.startswith("apt-get")]


def test_as_root_with_apt_it_installs_the_missing_tools(machine: Machine) -> None:
    machine.fake("id", "echo 0")
    done = machine.run()
    assert done.returncode == 0, done.stderr
    assert f"apt-get install -y -qq {' '.join(PACKAGES.values())}" in machine.logged()


def test_a_stopped_local_cluster_is_started(machine: Machine, tmp_path: Path) -> None:
    started = tmp_path / "started"
    for tool in TOOLS:
        machine.fake(tool)
    machine.fake("pg_isready", f'test -e "{started}"')
    machine.fake("pg_lsclusters",
                 "echo '15 main 5432 down postgres /var/lib/postgresql/15/main log'")
    machine.fake("pg_ctlcluster", f'touch "{started}"')
    machine.fake("psql", "echo 1")
    done = machine.run(URL)
    assert done.returncode == 0, done.stderr
    assert "pg_ctlcluster --skip-systemctl-redirect 15 main start" in machine.logged()


def test_an_unreachable_server_is_named_with_what_to_do(machine: Machine) -> None:
    for tool in TOOLS:
        machine.fake(tool)
    machine.fake("pg_isready", "exit 2")
    done = machine.run("postgresql://postgres@db.example:5433/test")
    assert done.returncode == 1
    assert "PostgreSQL at db.example:5433 is not running" in done.stderr
    assert "make test-sqlite" in done.stderr
