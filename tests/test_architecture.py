"""The import graph of sipfilter: no cycle between its modules (a package and its own submodules included), no
import inside a function to hide one, and the configuration a leaf that the rest of the code reads.

Read from the source with `ast`, so the rules hold for the code as written, not for one import order.
Imports under `if TYPE_CHECKING:` are type annotations only and are left out.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sipfilter"

# The only imports of sipfilter modules made inside a function, each with why it is late. None of them may
# break a cycle: the test below also fails if any of them, made at module level, would close one.
LAZY_IMPORTS = {
    # The Redis client is an optional dependency: only a process configured for Redis loads it.
    ("sipfilter.stores", "sipfilter.stores.redis_store"): "optional dependency (redis)",
    # Only the configured backend is loaded: a Redis deployment never imports the SQLite one.
    ("sipfilter.stores", "sipfilter.stores.embedded"): "only the configured store backend is loaded",
    # CLI start-up: every sub-command's parser is built at each start, so one-shot commands (check, lists,
    # config) do not import the proxy, its transports and the demo laboratory they never use.
    ("sipfilter.commands.run", "sipfilter.app"): "CLI start-up time",
    ("sipfilter.commands.demo", "sipfilter.demo"): "CLI start-up time",
    ("sipfilter.commands.demo", "sipfilter.lab"): "CLI start-up time",
    # CLI start-up: STIR/SHAKEN settings load cryptography's X.509; only a trunk with `identity:` needs them.
    ("sipfilter.configure", "sipfilter.identity.settings"): "CLI start-up time (cryptography)",
}


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    line: int
    in_function: bool


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The sipfilter modules an import statement needs: `from pkg import sub` needs pkg (its __init__ runs and
    is read from) and pkg.sub when that is a module."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            anchor = module.split(".") if MODULES[module].name == "__init__.py" else module.split(".")[:-1]
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join([*anchor, *([node.module] if node.module else [])])
        names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
    return [name for name in names if name in MODULES and name != module]


def _imports(module: str) -> Iterator[Import]:
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))

    def walk(node: ast.AST, in_function: bool) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                yield from (i for c in child.orelse for i in walk_one(c, in_function))
                continue
            yield from walk_one(child, in_function)

    def walk_one(node: ast.AST, in_function: bool) -> Iterator[Import]:
        if isinstance(node, ast.Import | ast.ImportFrom):
            for target in _targets(module, node):
                yield Import(module, target, node.lineno, in_function)
            return
        nested = in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        yield from walk(node, nested)

    yield from walk(tree, False)


IMPORTS = [imp for module in MODULES for imp in _imports(module)]


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
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
    return found


def _graph(include_lazy: bool) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {module: set() for module in MODULES}
    for imp in IMPORTS:
        if include_lazy or not imp.in_function:
            edges[imp.importer].add(imp.imported)
    return edges


def test_the_checker_sees_a_package_submodule_cycle() -> None:
    edges = {"p": {"p.engine"}, "p.engine": {"p.rules"}, "p.rules": {"p"}, "q": set()}
    assert _cycles(edges) == [["p", "p.engine", "p.rules"]]
    assert _cycles({"p": {"p.engine"}, "p.engine": set()}) == []


def test_no_import_cycle_between_sipfilter_modules() -> None:
    assert len(MODULES) > 50 and "sipfilter.config.reader" in MODULES
    assert _cycles(_graph(include_lazy=False)) == []


def test_no_function_level_import_except_the_listed_lazy_ones() -> None:
    late = sorted({(imp.importer, imp.imported) for imp in IMPORTS if imp.in_function})
    unlisted = [
        f"{imp.importer} imports {imp.imported} at line {imp.line} inside a function"
        for imp in IMPORTS
        if imp.in_function and (imp.importer, imp.imported) not in LAZY_IMPORTS
    ]
    assert unlisted == []
    assert sorted(LAZY_IMPORTS) == late, "an allowed lazy import no longer exists: remove it from the list"


def test_the_lazy_imports_hide_no_cycle() -> None:
    assert _cycles(_graph(include_lazy=True)) == []


def test_config_is_a_leaf() -> None:
    """sipfilter.config imports nothing of sipfilter outside its own package; its YAML reader nothing at all,
    not even for type annotations."""
    config = [m for m in MODULES if m == "sipfilter.config" or m.startswith("sipfilter.config.")]
    assert {"sipfilter.config", "sipfilter.config.reader", "sipfilter.config.model"} <= set(config)
    outside = [
        f"{imp.importer}:{imp.line} imports {imp.imported}"
        for imp in IMPORTS
        if imp.importer in config and imp.imported not in config
    ]
    assert outside == []
    reader = ast.parse(MODULES["sipfilter.config.reader"].read_text(encoding="utf-8"))
    every_import = [
        node
        for node in ast.walk(reader)
        if isinstance(node, ast.Import | ast.ImportFrom)
        and any(name.startswith("sipfilter") for name in _imported_names(node))
    ]
    assert every_import == []


def _imported_names(node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    return [node.module or ""] if not node.level else ["sipfilter (relative)"]


MAX_MODULE_LINES = 800  # past this a module holds more than one room: split it along a seam


def test_no_module_is_over_the_size_a_reader_can_hold() -> None:
    over = {
        name: lines
        for name, path in MODULES.items()
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert over == {}
