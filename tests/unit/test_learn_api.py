"""Public API of cstore.learn and the runnable examples in its docstrings."""
from __future__ import annotations

import ast
import doctest
import importlib
from pathlib import Path

import pytest

import cstore.learn

LEARN = Path(cstore.learn.__file__).parent
MODULES = sorted(f"cstore.learn.{p.stem}" for p in LEARN.glob("*.py") if p.stem != "__init__") + ["cstore.learn"]


def test_public_names_exist():
    assert cstore.learn.__all__
    for name in cstore.learn.__all__:
        assert getattr(cstore.learn, name) is not None, name


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples_run(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


@pytest.mark.parametrize("path", sorted(LEARN.glob("*.py")), ids=lambda p: p.name)
def test_modules_are_small_and_do_no_io(path):
    source = path.read_text()
    assert source.count("\n") < 320, "keep modules small; split by responsibility"
    banned = {"open", "print", "input"}
    calls = {n.func.id for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert not calls & banned
    imported = {a.name.split(".")[0] for n in ast.walk(ast.parse(source)) if isinstance(n, (ast.Import, ast.ImportFrom))
                for a in (n.names if isinstance(n, ast.Import) else [ast.alias(n.module or "")])}
    assert not imported & {"os", "io", "socket", "pathlib", "subprocess", "shutil", "requests", "logging"}
