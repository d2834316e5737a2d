"""The tree is the architecture: these rules keep the arrows between the rooms pointing down.

* a room imports only rooms below it (``RANKS``; rooms of equal rank do not import each other);
* only ``cstore.backend`` imports the Cassandra driver: it is the storage boundary;
* ``cstore.core``, ``cstore.learn`` and ``cstore.errors`` do no I/O, start no threads and do not log;
* a ``_private`` module is imported only from inside its own room (rooms talk through ``__init__``);
* no import cycle between modules; modules stay small.

``test_the_rules_catch_forbidden_imports`` runs the same checker on a few made-up modules that break
each rule, so a rule that silently stopped working would fail here too.
"""
from __future__ import annotations

import ast
from pathlib import Path

import cstore

PACKAGE = Path(cstore.__file__).parent
# Rank of each room: a module may import rooms of a lower rank, and its own room.
RANKS = {"errors": 0, "core": 1, "learn": 1, "config": 2, "backend": 3, "store": 4, "feedback": 5, "training": 6,
         "scoring": 6, "ops": 7, "bench": 8, "cli": 9, "": 10}
PURE = {"errors", "core", "learn"}
IMPURE_MODULES = {"os", "io", "socket", "pathlib", "subprocess", "shutil", "threading", "logging", "concurrent",
                  "multiprocessing", "asyncio", "tempfile", "signal", "http", "urllib", "requests", "sys", "glob"}
IMPURE_CALLS = {"open", "print", "input"}
MAX_LINES = 420


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def room(module: str) -> str:
    """``cstore.store._engine`` → ``store``; ``cstore`` and ``cstore.__main__`` → the top (``""``)."""
    parts = module.split(".")
    return "" if len(parts) == 1 or parts[1] == "__main__" else parts[1]


def imports(source: str) -> list[tuple[str, int]]:
    """Every module an import statement names (at any depth: lazy imports count), with its line."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, node.lineno))
            if node.module.split(".")[0] == "cstore":  # `from cstore.room import _module` names a module too
                out += [(f"{node.module}.{a.name}", node.lineno) for a in node.names]
    return out


def violations(sources: dict[str, str]) -> list[str]:
    """Every broken rule in ``{module name: source}``."""
    found = []
    graph: dict[str, set[str]] = {m: set() for m in sources}
    for module, source in sources.items():
        here = room(module)
        for target, line in imports(source):
            top = target.split(".")[0]
            where = f"{module}:{line} imports {target}"
            if top == "cassandra" and here != "backend":
                found.append(f"{where}: only cstore.backend may use the driver")
            if here in PURE and top in IMPURE_MODULES:
                found.append(f"{where}: {here} does no I/O, threads or logging")
            if top != "cstore" or target not in sources:  # outside cstore, or a name rather than a module
                continue
            there = room(target)
            if there != here and RANKS[there] >= RANKS[here]:
                found.append(f"{where}: {here or 'cstore'} may not import {there or 'cstore'} (layers point down)")
            private = [p for p in target.split(".")[2:] if p.startswith("_")]
            if private and there != here:
                found.append(f"{where}: a private module of {there}; import from cstore.{there} instead")
            if target != module and not module.startswith(target + "."):
                graph[module].add(target)
        if here in PURE:
            calls = {n.func.id for n in ast.walk(ast.parse(source))
                     if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
            for name in sorted(calls & IMPURE_CALLS):
                found.append(f"{module} calls {name}(): {here} does no I/O")
    found += [f"import cycle among {', '.join(group)}" for group in _cycles(graph)]
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import each other in a circle (strongly connected, Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def _sources() -> dict[str, str]:
    return {_module_name(p): p.read_text() for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_belongs_to_a_room():
    assert {room(m) for m in _sources()} <= set(RANKS)


def test_the_package_keeps_its_rules():
    assert violations(_sources()) == []


def test_the_rules_catch_forbidden_imports():
    made_up = {
        "cstore.core._bad": "import threading\nfrom cstore.store import Store\n",
        "cstore.store._bad": "from cassandra.cluster import Cluster\nfrom cstore.backend._params import ParamTables\n",
        "cstore.learn.bad": "def f():\n    print('hi')\n",
        "cstore.feedback._a": "from cstore.feedback._b import x\n",
        "cstore.feedback._b": "from cstore.feedback._a import y\n",
        "cstore.store": "", "cstore.backend._params": "", "cstore.backend": "",
    }
    found = "\n".join(violations(made_up))
    assert "cstore.core._bad:1 imports threading: core does no I/O" in found
    assert "cstore.core._bad:2 imports cstore.store: core may not import store" in found
    assert "cstore.store._bad:1 imports cassandra.cluster: only cstore.backend may use the driver" in found
    assert "cstore.store._bad:2 imports cstore.backend._params: a private module of backend" in found
    assert "cstore.learn.bad calls print()" in found
    assert "import cycle among cstore.feedback._a, cstore.feedback._b" in found


def test_modules_stay_small():
    big = {m: s.count("\n") for m, s in _sources().items() if s.count("\n") > MAX_LINES}
    assert big == {}, "split these by responsibility"
