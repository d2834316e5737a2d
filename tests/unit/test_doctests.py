"""Every module's docstring examples run (and are collected here, one test per module)."""
from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import cstore
import cstore_dev


def _modules(package) -> list[str]:
    names = [package.__name__]
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if not info.name.endswith("__main__"):
            names.append(info.name)
    return sorted(names)


MODULES = _modules(cstore) + _modules(cstore_dev)


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples_run(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def test_the_examples_are_really_there():
    ran = {m: doctest.testmod(importlib.import_module(m), optionflags=doctest.ELLIPSIS).attempted for m in MODULES}
    assert sum(ran.values()) >= 40 and ran["cstore.learn"] > 0 and ran["cstore.core._timeuuid"] > 0
