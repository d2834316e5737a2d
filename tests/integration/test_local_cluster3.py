"""Three local nodes, RF=3: QUORUM keeps working with one node down, ALL fails clearly; `down` cleans up."""
from __future__ import annotations

import subprocess
import time

import pytest
from cassandra import ConsistencyLevel
from cassandra.cluster import Cluster
from cassandra.query import SimpleStatement

from cstore.config import load_config
from cstore.errors import ConsistencyUnavailable
from cstore.local import LocalCluster
from cstore.local.node import pid_alive
from cstore import schema
from cstore.store import Store
from conftest import REPO


@pytest.mark.slow
def test_three_nodes_quorum_survives_one_down_all_fails(tmp_path):
    # 127.0.0.11-13 so that this cluster never collides with the single test node on 127.0.0.1.
    cluster = LocalCluster(REPO / ".local", n_nodes=3, heap="512M", name="test3", first_octet=11)
    cluster.down(purge=True)
    t0 = time.monotonic()
    try:
        statuses = cluster.up()
        print(f"\n3-node start-up: {time.monotonic() - t0:.1f}s")
        assert [s.state for s in statuses] == ["up", "up", "up"]
        points = ",".join(cluster.contact_points)
        strong = load_config({"contact_points": points, "keyspace": "three", "replication_factor": 3}, env={})
        c = Cluster(list(cluster.contact_points), protocol_version=5)
        session = c.connect()
        schema.apply(session, "three", schema.replication_map(strong), log=lambda m: None)
        rf = session.execute("SELECT replication FROM system_schema.keyspaces WHERE keyspace_name='three'").one()
        assert rf.replication["replication_factor"] == "3"
        with Store.from_config(strong) as store:
            store.create_model("m", {"w": (64,)}, chunk_size=16)

        cluster.stop("node3")
        assert [s.state for s in cluster.status()] == ["up", "up", "down"]
        time.sleep(3)  # let the survivors' gossip mark node3 down
        with Store.from_config(strong) as store:
            r = store.apply_update("m", "w", [1.0], indices=[3])  # QUORUM + SERIAL: 2 of 3 suffice
            assert r.chunks == [0]
            assert store.read_model("m").params["w"][3] == -1.0
        session.execute(SimpleStatement("INSERT INTO three.models (name) VALUES ('quorum_ok')",
                                        consistency_level=ConsistencyLevel.QUORUM))
        with pytest.raises(Exception) as raw:
            session.execute(SimpleStatement("INSERT INTO three.models (name) VALUES ('all_fails')",
                                            consistency_level=ConsistencyLevel.ALL))
        assert "ALL" in str(raw.value) and "alive_replicas" in str(raw.value)
        with Store.from_config(load_config({"contact_points": points, "keyspace": "three",
                                            "profile": "all"}, env={})) as store_all:
            with pytest.raises(ConsistencyUnavailable, match=r"consistency ALL.*only 2 are alive"):
                store_all.apply_update("m", "w", [1.0], indices=[4])
        c.shutdown()
    finally:
        pids = list(cluster.pids().values())
        cluster.down(purge=True)
        assert not any(pid_alive(p) for p in pids)
        out = subprocess.run(["pgrep", "-f", "cstore-test3|/test3/node"], capture_output=True, text=True).stdout
        assert out.strip() == "", f"Cassandra processes left behind: {out}"
