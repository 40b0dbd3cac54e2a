"""The package's shape, read from its source with `ast` (nothing is imported): no import cycle among its
modules, the engine never reaches the widgets, the plain pipelines never reach ipywidgets, no module over
600 lines without a written reason, and no private helper imported from another module.

The allowlists name only files another engineer owns while this rule is new (engine/*, interventions.py,
models.py, conditional.py, methods.py, stack.py, vectors.py, cli.py); each entry says why it is there. An
entry that is no longer needed fails the test, so the lists only shrink.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "steerwidgets"
ROOT = "steerwidgets"
MAX_LINES = 600
FRONT_END = ("anywidget", "ipywidgets", "traitlets")

# Modules over MAX_LINES without a "Long because" line in their docstring.
LONG_ALLOWED: dict[str, str] = {}

# (importing module, module imported from, private name).
PRIVATE_ALLOWED = {
    # engine/_trace.py is the engine's shared plumbing; its helpers are private to the engine package
    # (other engineer's files).
    ("steerwidgets.engine.activations", "steerwidgets.engine._trace", "_hidden"),
    ("steerwidgets.engine.generation", "steerwidgets.engine._trace", "_Plan"),
    ("steerwidgets.engine.generation", "steerwidgets.engine._trace", "_Row"),
    ("steerwidgets.engine.generation", "steerwidgets.engine._trace", "_norm_ratio"),
    ("steerwidgets.engine.generation", "steerwidgets.engine._trace", "_plans"),
    ("steerwidgets.engine.generation", "steerwidgets.engine._trace", "_steer_in_trace"),
    ("steerwidgets.engine.letter_batch", "steerwidgets.engine._trace", "_hidden"),
    ("steerwidgets.engine.letter_batch", "steerwidgets.engine._trace", "_scale_factor"),
    ("steerwidgets.engine.letter_batch", "steerwidgets.engine._trace", "_set_hidden"),
    ("steerwidgets.engine.scoring", "steerwidgets.engine._trace", "_Plan"),
    ("steerwidgets.engine.scoring", "steerwidgets.engine._trace", "_Row"),
    ("steerwidgets.engine.scoring", "steerwidgets.engine._trace", "_plans"),
    ("steerwidgets.engine.scoring", "steerwidgets.engine._trace", "_steer_in_trace"),
    ("steerwidgets.engine.sweep", "steerwidgets.engine._trace", "_cache_from"),
    ("steerwidgets.engine.sweep", "steerwidgets.engine._trace", "_hidden"),
    ("steerwidgets.engine.sweep", "steerwidgets.engine._trace", "_scale_factor"),
    ("steerwidgets.engine.sweep", "steerwidgets.engine._trace", "_set_hidden"),
}


@cache
def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def is_package(name: str) -> bool:
    return modules()[name].name == "__init__.py"


@cache
def tree(name: str) -> ast.Module:
    return ast.parse(modules()[name].read_text(encoding="utf-8"))


def resolve(importer: str, level: int, module: str | None) -> str:
    """The absolute name of ``from {'.' * level}{module} import ...`` written in ``importer``."""
    if not level:
        return module or ""
    base = importer.split(".")
    if not is_package(importer):
        base = base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def module_level_imports(name: str) -> list[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported: its body, and inside module-level if / try / with
    blocks (not under ``if TYPE_CHECKING``, not inside functions or classes)."""
    out: list[ast.Import | ast.ImportFrom] = []

    def walk(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                out.append(node)
            elif isinstance(node, ast.If):
                if not _is_type_checking(node):
                    walk(node.body)
                walk(node.orelse)
            elif isinstance(node, ast.Try):
                walk(node.body)
                for handler in node.handlers:
                    walk(handler.body)
                walk(node.orelse)
                walk(node.finalbody)
            elif isinstance(node, ast.With):
                walk(node.body)

    walk(tree(name).body)
    return out


def all_imports(name: str) -> list[ast.Import | ast.ImportFrom]:
    return [n for n in ast.walk(tree(name)) if isinstance(n, (ast.Import, ast.ImportFrom))]


def ancestors(name: str) -> set[str]:
    """The packages whose __init__ has run (or is running) whenever ``name`` runs: its parents."""
    parts = name.split(".")
    return {".".join(parts[:k]) for k in range(1, len(parts))}


def targets(name: str, node: ast.Import | ast.ImportFrom) -> set[str]:
    """Modules (of any package) an import statement loads, as absolute names; for steerwidgets modules,
    the parent packages whose __init__ it runs too, except the importer's own parents (already running)."""
    found: set[str] = set()
    if isinstance(node, ast.Import):
        found |= {alias.name for alias in node.names}
    else:
        base = resolve(name, node.level, node.module)
        submodules = {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules()}
        found |= submodules
        # `from . import metrics` needs only the submodule; a name defined in a package's __init__ needs
        # that package, and so does anything from a package whose __init__ has not run yet
        if base not in ancestors(name) or len(submodules) < len(node.names):
            found.add(base)
    out = set()
    for target in found:
        out.add(target)
        if target.split(".")[0] == ROOT:
            out |= ancestors(target) - ancestors(name) - {ROOT}
    return out


@cache
def graph() -> dict[str, set[str]]:
    """Module-level import edges among steerwidgets modules."""
    known = modules()
    return {
        name: {t for node in module_level_imports(name) for t in targets(name, node) if t in known} - {name}
        for name in known
    }


def reachable(start: str) -> set[str]:
    """Every module, steerwidgets' or not, that importing ``start`` loads through module-level imports."""
    seen, todo, outside = {start}, [start], set()
    while todo:
        name = todo.pop()
        for node in module_level_imports(name):
            for target in targets(name, node):
                if target in modules():
                    if target not in seen:
                        seen.add(target)
                        todo.append(target)
                else:
                    outside.add(target.split(".")[0])
    return seen | outside


def find_cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    edges = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return cycles


# --- the checks ---------------------------------------------------------------------------------------
def test_the_graph_sees_the_package():
    assert {"steerwidgets", "steerwidgets.engine.sweep", "steerwidgets.widgets.playground"} <= set(modules())
    assert "steerwidgets.likelihood_shift" in graph()["steerwidgets.contexts"]
    assert "steerwidgets.engine" in graph()["steerwidgets.capabilities"]  # parent package of engine.scoring


def test_no_import_cycle_among_modules():
    assert find_cycles() == []


def test_the_cycle_finder_finds_a_planted_cycle():
    graph()["steerwidgets.verdicts"].add("steerwidgets.report")  # report imports verdicts
    try:
        assert any({"steerwidgets.report", "steerwidgets.verdicts"} <= set(c) for c in find_cycles())
    finally:
        graph()["steerwidgets.verdicts"].discard("steerwidgets.report")


def test_the_engine_never_imports_the_widgets():
    engine = [name for name in modules() if (name + ".").startswith("steerwidgets.engine.")]
    assert len(engine) >= 5
    for name in engine:
        for node in all_imports(name):  # not even inside a function
            widgets = [t for t in targets(name, node) if t.startswith("steerwidgets.widgets")]
            assert not widgets, (name, node.lineno, widgets)
        loaded = reachable(name)
        assert not [m for m in loaded if m.startswith("steerwidgets.widgets")], name
        assert not set(FRONT_END) & loaded, (name, set(FRONT_END) & loaded)


def test_the_plain_pipelines_do_not_import_the_front_end():
    for name in ("steerwidgets.playground", "steerwidgets.reliability_lab", "steerwidgets.comparison",
                 "steerwidgets.evaluation"):  # fmt: skip
        loaded = reachable(name)
        assert not set(FRONT_END) & loaded, (name, set(FRONT_END) & loaded)
        assert not [m for m in loaded if m.startswith("steerwidgets.widgets")], name


def test_no_long_module_without_a_reason():
    too_long = {}
    for name, path in modules().items():
        n = len(path.read_text(encoding="utf-8").splitlines())
        doc = ast.get_docstring(tree(name)) or ""
        if n > MAX_LINES and "Long because" not in doc:
            too_long[name] = n
    assert set(too_long) <= set(LONG_ALLOWED), {k: v for k, v in too_long.items() if k not in LONG_ALLOWED}
    stale = set(LONG_ALLOWED) - set(too_long)
    assert not stale, f"no longer too long (or now explained): remove {sorted(stale)} from LONG_ALLOWED"


def test_no_private_helper_is_imported_from_another_module():
    found = set()
    for name in modules():
        for node in all_imports(name):  # function-level imports count too
            if not isinstance(node, ast.ImportFrom):
                continue
            source = resolve(name, node.level, node.module)
            if source.split(".")[0] != ROOT:
                continue
            for alias in node.names:
                private = alias.name.startswith("_") and not alias.name.startswith("__")
                if private and f"{source}.{alias.name}" not in modules():  # a private module is fine
                    found.add((name, source, alias.name))
    assert found <= PRIVATE_ALLOWED, sorted(found - PRIVATE_ALLOWED)
    stale = PRIVATE_ALLOWED - found
    assert not stale, f"made public since: remove {sorted(stale)} from PRIVATE_ALLOWED"


def test_no_private_attribute_of_another_module_is_used():
    """``from . import data`` then ``data._helper``: the same rule, spelled as an attribute."""
    found = []
    for name in modules():
        aliases = {}
        for node in all_imports(name):
            if isinstance(node, ast.ImportFrom):
                source = resolve(name, node.level, node.module)
                for alias in node.names:
                    if f"{source}.{alias.name}" in modules():
                        aliases[alias.asname or alias.name] = f"{source}.{alias.name}"
            else:
                for alias in node.names:
                    if alias.name.split(".")[0] == ROOT:
                        aliases[alias.asname or alias.name] = alias.name
        for node in ast.walk(tree(name)):
            if not (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)):
                continue
            if node.value.id in aliases and node.attr.startswith("_") and not node.attr.startswith("__"):
                found.append((name, node.lineno, f"{node.value.id}.{node.attr}"))
    assert found == []
