"""The public surface is pinned: ``cstore.__all__`` is what the README teaches, and every error is in it."""
from __future__ import annotations

import inspect

import cstore
import cstore.errors

PINNED = [
    "connect", "Store", "Config", "load_config",
    "ModelState", "UpdateResult", "create_learner",
    "FeedbackWriter", "send_feedback", "Worker", "Client", "ModelHandle",
    "CstoreError", "ConfigError", "ConnectionFailed", "SchemaError", "PermissionDenied", "ValidationError",
    "UnknownModel", "UnknownAlias", "GuardFailing", "ModelExists", "PayloadTooLarge", "InvalidFeedback",
    "CorruptData", "MissingChunk", "KeyUnavailable",
    "TransientError", "ConflictError", "ConsistencyUnavailable", "ReplicaTimeout", "CoordinatorTimeout",
    "ClusterUnreachable", "UnknownOutcome", "PartialCommit", "NotLoaded", "Closed", "FeedbackBackPressure",
    "FeedbackWriteFailed",
]


def test_the_surface_is_pinned():
    assert cstore.__all__ == PINNED  # adding or removing a public name is a decision: change it here too
    for name in cstore.__all__:
        assert getattr(cstore, name) is not None, name


def test_every_error_is_public_and_in_one_tree():
    errors = {n for n, obj in vars(cstore.errors).items()
              if inspect.isclass(obj) and issubclass(obj, cstore.errors.CstoreError)}
    assert errors == set(cstore.errors.__all__)
    assert errors <= set(cstore.__all__)
    for name in errors:
        assert getattr(cstore, name) is getattr(cstore.errors, name)


def test_every_room_declares_its_public_names():
    import importlib
    for room in ("core", "config", "backend", "store", "feedback", "training", "scoring", "ops", "bench", "learn"):
        mod = importlib.import_module(f"cstore.{room}")
        assert mod.__doc__ and mod.__all__, room
        for name in mod.__all__:
            assert hasattr(mod, name), f"cstore.{room}.{name}"


def test_the_version_comes_from_the_package_metadata():
    from importlib.metadata import version
    assert cstore.__version__ == version("cstore")


def test_one_version_everywhere():
    """pyproject.toml is the one version source: the installed metadata, ``cstore --version`` and the
    chart's appVersion (the image tag it deploys by default) agree with it."""
    import re
    import subprocess
    import sys
    import tomllib
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    version = tomllib.loads((repo / "pyproject.toml").read_text())["project"]["version"]
    assert cstore.__version__ == version
    out = subprocess.run([sys.executable, "-c", "from cstore.cli import main; main()", "--version"],
                         capture_output=True, text=True, timeout=60).stdout
    assert version in out
    chart = (repo / "helm" / "cstore" / "Chart.yaml").read_text()
    assert re.search(r'^appVersion: "?([^"\n]+)"?$', chart, re.M).group(1) == version
