"""``cstore bench``: each scenario measures cstore and its baseline in the same run.

Scenarios register themselves in :data:`SCENARIOS`; each returns a flat dict of figures whose
keys are the documented JSON keys (see ``cstore bench --help``).
"""
from __future__ import annotations

from cstore.bench.runner import SCENARIOS, BenchContext, run_scenarios

__all__ = ["SCENARIOS", "BenchContext", "run_scenarios"]
