from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata

import pytest

from tests.helpers import ROOT

SHIPPED_PACKAGES = {"service", "blueprints", "cli"}
# What the image needs besides the packages: metadata to install them, and the entry points.
SHIPPED_FILES = {"pyproject.toml", "README.md", "wsgi.py", "gunicorn.conf.py",
                 "docker-entrypoint.sh"}
TOOLING = ("devtools/", "qstash_local", "stripe_local", "devstack", "serving", "demo")
NOT_COPIED = shutil.ignore_patterns(".git", ".venv", "instance", "build", "dist", "*.egg-info",
                                    "__pycache__", ".*_cache", ".hypothesis")


def can_build_without_isolation() -> bool:
    """Whether the venv's setuptools can write a wheel by itself (needing no package index)."""
    version = tuple(int(part) for part in metadata.version("setuptools").split(".")[:2])
    return version >= (70, 1) or importlib.util.find_spec("wheel") is not None


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Build the wheel from a copy of the working tree; return the paths it holds."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "src"
    shutil.copytree(ROOT, source, ignore=NOT_COPIED)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
               "--disable-pip-version-check", "-w", str(tmp / "dist"), str(source)]
    if can_build_without_isolation():
        command.append("--no-build-isolation")
    built = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    [wheel] = (tmp / "dist").glob("eleva_jobs-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


@pytest.mark.slow
def test_the_wheel_holds_none_of_the_tooling(wheel_names: list[str]) -> None:
    assert (ROOT / "devtools" / "stripe_local").is_dir()  # there to be left out
    tooling = [name for name in wheel_names if any(word in name for word in TOOLING)]
    assert tooling == []
    top = {name.split("/")[0] for name in wheel_names if not name.split("/")[0].endswith(
        ".dist-info")}
    assert top == SHIPPED_PACKAGES


@pytest.mark.slow
def test_the_wheel_holds_the_service_its_migrations_and_templates(
    wheel_names: list[str],
) -> None:
    names = set(wheel_names)
    for package in SHIPPED_PACKAGES:
        assert f"{package}/__init__.py" in names
    assert {"service/migrations/env.py", "blueprints/qstash.py", "cli/qstash.py"} <= names
    assert any(re.fullmatch(r"service/migrations/versions/\w+\.py", n) for n in names)
    assert any(n.startswith("service/templates/email/") for n in names)


def test_the_dockerfile_copies_only_what_ships() -> None:
    copied: list[str] = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        words = line.split()
        if not words or words[0].upper() != "COPY":
            continue
        if any(word.startswith("--from=") for word in words):
            continue  # between build stages, not from the repository
        sources = [word for word in words[1:-1] if not word.startswith("--")]
        copied += [source.removeprefix("./").rstrip("/") for source in sources]
    assert copied, "no COPY line found"
    assert set(copied) <= SHIPPED_PACKAGES | SHIPPED_FILES, copied
