"""Public API of cstore.learn and the size of its modules (its doctests run in test_doctests.py, its
purity is checked in test_architecture.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

import cstore.learn

LEARN = Path(cstore.learn.__file__).parent


def test_public_names_exist():
    assert cstore.learn.__all__
    for name in cstore.learn.__all__:
        assert getattr(cstore.learn, name) is not None, name


@pytest.mark.parametrize("path", sorted(LEARN.glob("*.py")), ids=lambda p: p.name)
def test_modules_are_small(path):
    # Tighter than the package-wide bound (tests/unit/test_architecture.py, which also keeps learn pure):
    # one algorithm per file.
    assert path.read_text().count("\n") < 320, "keep modules small; split by responsibility"
