"""``cstore bench``: each scenario measures cstore and its baseline in the same run, on the cluster
the configuration points at (operators benchmark their own clusters, so this ships in the wheel).

Scenarios (``_ingest``, ``_apply``, ``_e2e``, ``_score``) register themselves in :data:`SCENARIOS`
when loaded; each returns a flat dict of figures whose keys are the documented JSON keys (see
``cstore bench --help``). :data:`ORDER` is the order ``all`` runs them in.
"""
from cstore.bench._runner import ORDER, SCENARIOS, BenchContext, load_scenario, run_scenarios

__all__ = ["ORDER", "SCENARIOS", "BenchContext", "load_scenario", "run_scenarios"]
