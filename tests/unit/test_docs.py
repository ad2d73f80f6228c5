from __future__ import annotations

import re
from fnmatch import fnmatch

from tests.helpers import ROOT

DOCS = ("README.md", "bench/README.md", *(f"docs/{path.name}"
                                          for path in sorted((ROOT / "docs").glob("*.md"))))
TOP = ("service", "blueprints", "cli", "devtools", "tests", "bench", "deploy", "scripts", "docs")
# A path the docs name: a top-level folder, then names (`::test` is not part of it). One that
# goes on with '{' or '*' is a pattern.
PATH_RE = re.compile(rf"\b((?:{'|'.join(TOP)})/[\w./-]*+)([{{*]?)")
# What runs make (a virtual environment, screenshots, results) is ignored by git and need not
# exist in a fresh checkout.
IGNORED = [line.rstrip("/") for line in (ROOT / ".gitignore").read_text().splitlines()
           if line.strip() and not line.startswith("#")]


def ignored(path: str) -> bool:
    """Whether .gitignore covers path or a folder above it (patterns with a '/' are rooted)."""
    parts = path.split("/")
    return any(fnmatch("/".join(parts[:end]) if "/" in pattern else parts[end - 1], pattern)
               for end in range(1, len(parts) + 1) for pattern in IGNORED)


def missing_paths(text: str) -> set[str]:
    """Return the repository paths a text names that do not exist."""
    named = {path.rstrip(".-") for path, pattern in PATH_RE.findall(text) if not pattern}
    return {path for path in named if not ignored(path) and not (ROOT / path).exists()}


def test_every_path_the_docs_name_exists() -> None:
    assert {doc: missing_paths((ROOT / doc).read_text()) for doc in DOCS} == {
        doc: set() for doc in DOCS}


def test_a_moved_path_is_found_in_prose_and_in_code() -> None:
    text = ("`tests/test_e2e_local.py::test_x` moved to tests/e2e/test_local_stack.py. See "
            "service/db.py, bench/peer/results-{a,b}.json, bench/*.json, bench/peer/.venv, "
            "docs/. And service/jobs.py.")
    assert missing_paths(text) == {"tests/test_e2e_local.py", "service/jobs.py"}
    assert ignored("tests/artifacts/console/overview.png") and ignored("bench/peer/.venv")
    assert ignored("service/__pycache__/db.cpython-311.pyc") and not ignored("service/db.py")


def readme_section(title: str) -> str:
    """Return the text of the README's `## title` section, up to the next section."""
    readme = (ROOT / "README.md").read_text()
    return readme.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_the_readme_layout_names_every_module_of_the_service_and_the_tooling() -> None:
    drawn = set(re.findall(r"[\w.]+/?", readme_section("Layout")))
    unnamed = sorted(
        str(path.relative_to(ROOT)) for folder in ("service", "devtools")
        for path in (ROOT / folder).iterdir()
        if not path.name.startswith(("_", ".")) and path.suffix in (".py", "")
        and (path.name + "/" if path.is_dir() else path.name) not in drawn)
    assert unnamed == []


def read_variables() -> set[str]:
    """The environment variables the settings, gunicorn's config and the entrypoint read."""
    settings = (ROOT / "service/settings.py").read_text()
    calls = re.findall(r"\b(?:text|integer|fraction|choice)\(\s*((?:\"[A-Z0-9_]+\",?\s*)+)",
                       settings)
    return ({name for call in calls for name in re.findall(r"[A-Z0-9_]+", call)}
            | set(re.findall(r"os\.environ\.get\(\s*[\"']([A-Z0-9_]+)",
                             (ROOT / "gunicorn.conf.py").read_text()))
            | set(re.findall(r"\$\{([A-Z][A-Z0-9_]+)",
                             (ROOT / "docker-entrypoint.sh").read_text())))


def test_the_readme_configuration_table_names_every_variable_read() -> None:
    table = readme_section("Configuration")
    variables = read_variables()
    assert {"DATABASE_URL", "QSTASH_TOKEN", "GUNICORN_WORKERS", "PORT",
            "QSTASH_UPDATE_STRICT"} <= variables
    assert sorted(name for name in variables if f"`{name}`" not in table) == []
