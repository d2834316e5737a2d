"""The development commands, mounted on ``cstore`` through the ``cstore.cli`` entry points:
``cstore local …`` (a local Cassandra) and ``cstore eval`` (learning quality against River)."""
from cstore_dev.cli._eval import eval_cmd
from cstore_dev.cli._local import local

__all__ = ["eval_cmd", "local"]
