"""Errors of the development tooling (part of the :class:`cstore.CstoreError` tree, so the CLI reports them)."""
from __future__ import annotations

from cstore.errors import CstoreError


class LocalClusterError(CstoreError):
    """The local Cassandra launcher could not start, find or stop a node."""
