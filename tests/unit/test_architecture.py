from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from alembic.script import ScriptDirectory

import service.models  # noqa: F401  (registers its tables on Base)
import service.payouts.models  # noqa: F401  (likewise)
from service import db
from tests.helpers import ROOT

PACKAGES = ("service", "blueprints", "cli")
# Declarations every layer builds on: no web framework, no database.
PURE = ("service.runs.jobs", "service.qstash.protocol")
# The factory assembles everything, so its function-level imports are the only ones that
# may reach back to modules that build on its package.
ASSEMBLY = "service"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources() -> dict[str, Path]:
    return {module_name(path): path for package in PACKAGES
            for path in sorted((ROOT / package).rglob("*.py"))}


def imports(module: str, path: Path, *, deferred: bool) -> Iterator[str]:
    """Yield the modules a module imports: when loaded, and also in its functions if deferred."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]

    def visit(nodes: list[ast.stmt]) -> Iterator[str]:
        for node in nodes:
            if isinstance(node, ast.Import):
                yield from (alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                yield base
                yield from (f"{base}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue  # read by the type checker only: nothing is loaded
            elif isinstance(node, (ast.If, ast.Try, ast.With)):
                yield from visit(node.body)
                yield from visit(getattr(node, "orelse", []))
            elif deferred and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                ast.ClassDef)):
                yield from visit(node.body)

    yield from visit(ast.parse(path.read_text()).body)


def import_graph() -> dict[str, set[str]]:
    """Map each module to the project modules it imports, deferred imports included."""
    found = sources()
    return {module: {name for name in imports(module, path, deferred=module != ASSEMBLY)
                     if name in found and name != module}
            for module, path in found.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Return the strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def test_no_import_circles() -> None:
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_declarations_import_neither_flask_nor_sqlalchemy() -> None:
    found = sources()
    graph = import_graph()
    for start in PURE:
        reached, todo = set(), [start]
        while todo:
            module = todo.pop()
            if module not in reached:
                reached.add(module)
                todo.extend(graph[module])
        for module in reached:
            roots = {name.split(".")[0]
                     for name in imports(module, found[module], deferred=True)}
            assert not roots & {"flask", "sqlalchemy", "werkzeug"}, (start, module)


# Rooms the request side calls with what they need (engine, scrubber, provider, publisher):
# none of their modules imports the web framework or the app's extensions.
NO_WEB = ("service.runs", "service.payouts", "service.notifications")


def test_domain_rooms_import_neither_flask_nor_the_extensions() -> None:
    found = {module: path for module, path in sources().items() if module.startswith(NO_WEB)}
    assert {"service.runs.runner", "service.payouts.payrun"} <= found.keys()
    web = sorted(f"{module}: {name}" for module, path in found.items()
                 for name in imports(module, path, deferred=True)
                 if name.split(".")[0] in {"flask", "werkzeug"}
                 or name.startswith("service.extensions"))
    assert web == []


def test_deferred_imports_say_why() -> None:
    """A function-level import is preceded by a comment (one comment covers a block)."""
    unexplained = []
    for path in sources().values():
        lines = path.read_text().splitlines()
        for function in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            imports = sorted((node for node in ast.walk(function)
                              if isinstance(node, (ast.Import, ast.ImportFrom))),
                             key=lambda node: node.lineno)
            previous_end = None
            for node in imports:
                starts_block = previous_end is None or any(
                    line.strip() for line in lines[previous_end:node.lineno - 1])
                previous_end = node.end_lineno
                if not starts_block:
                    continue
                above = lines[node.lineno - 2].strip() if node.lineno > 1 else ""
                if not above.startswith("#") and "#" not in lines[node.lineno - 1]:
                    unexplained.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert unexplained == []


def model_aliases(tree: ast.AST, models: set[str]) -> list[str]:
    """Return the names shorter than three letters that an assignment binds to a model."""
    return [target.id for node in ast.walk(tree) if isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Name) and node.value.id in models
            for target in node.targets
            if isinstance(target, ast.Name) and len(target.id) < 3]


def test_models_go_by_their_own_names() -> None:
    """`T.status` hides which table a query reads; `PaymentTransfer.status` says it."""
    models = {mapper.class_.__name__ for mapper in db.Base.registry.mappers}
    assert {"JobRun", "PaymentTransfer"} <= models
    found = {f"{module}: {alias}" for module, path in sources().items()
             for alias in model_aliases(ast.parse(path.read_text()), models)}
    assert found == set()
    assert model_aliases(ast.parse("T = PaymentTransfer"), models) == ["T"]


def test_migrations_form_one_chain_in_file_order() -> None:
    """Each `NNNN_*.py` is revision NNNN and revises the file before it; the last is the head."""
    scripts = ScriptDirectory.from_config(db.alembic_config())
    files = sorted((db.MIGRATIONS / "versions").glob("[0-9][0-9][0-9][0-9]_*.py"))
    revisions = [path.name[:4] for path in files]
    assert len(revisions) >= 6
    assert [scripts.get_revision(rev).down_revision for rev in revisions] == [
        None, *revisions[:-1]]
    assert scripts.get_heads() == [revisions[-1]] == [db.head_revision()]
