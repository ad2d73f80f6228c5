from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import ROOT

SERVICE = ROOT / "service"


def imported_modules(path: Path) -> set[str]:
    """Name the modules a source file imports from, relative imports resolved."""
    package = ".".join(path.relative_to(SERVICE.parent).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            found.add(".".join(part for part in (base, node.module or "") if part))
    return found


def test_the_payouts_domain_knows_no_web() -> None:
    for path in sorted((SERVICE / "payouts").glob("*.py")):
        web = {name for name in imported_modules(path)
               if name.split(".")[0] in ("flask", "werkzeug")}
        assert not web, f"{path.name} imports {web}"


def test_settings_take_only_the_delay_table_from_payouts() -> None:
    payouts = {name for name in imported_modules(SERVICE / "settings.py")
               if name.startswith("service.payouts")}
    assert payouts == {"service.payouts.rules"}
