"""cstore's development tooling, kept out of the runtime wheel: the local Cassandra launcher
(``cstore local``), the demo (``make demo``), the simulators, the Jepsen-style history checker and the
learning-quality evaluation (``cstore eval``). ``make`` installs it beside cstore (``pip install -e dev``).
"""
