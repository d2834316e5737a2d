"""Test fixtures: a real Cassandra for every integration test.

Order of preference: $CSTORE_CONTACT_POINTS (an existing cluster) > a testcontainers
``cassandra:5.0`` container when CSTORE_TESTCONTAINERS=1 and Docker answers > the project's
own local node (started here if none answers on 127.0.0.1:9042, and stopped at the end only
if this session started it).
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TEST_KEYSPACE = os.environ.get("CSTORE_TEST_KEYSPACE", "cstore_test")


def _testcontainers_cassandra():  # pragma: no cover - needs a Docker engine, absent on our machines
    from testcontainers.cassandra import CassandraContainer
    container = CassandraContainer("cassandra:5.0")
    container.start()
    return container, [container.get_container_host_ip()], int(container.get_exposed_port(9042))


@pytest.fixture(scope="session")
def cassandra_endpoint():
    """(contact_points, port) of a running Cassandra."""
    if os.environ.get("CSTORE_CONTACT_POINTS"):
        yield os.environ["CSTORE_CONTACT_POINTS"].split(","), int(os.environ.get("CSTORE_PORT", "9042"))
        return
    if os.environ.get("CSTORE_TESTCONTAINERS") == "1":
        container, points, port = _testcontainers_cassandra()
        try:
            yield points, port
        finally:
            container.stop()
        return
    from cstore_dev.local import LocalCluster
    from cstore_dev.local.cluster import cql_port_open
    if cql_port_open("127.0.0.1"):
        yield ["127.0.0.1"], 9042
        return
    cluster = LocalCluster(REPO / ".local")
    cluster.up()
    try:
        yield cluster.contact_points, 9042
    finally:
        cluster.down()


@pytest.fixture(scope="session")
def base_config(cassandra_endpoint):
    """Config for the test keyspace, with its schema applied once per session."""
    from cstore.backend import apply_schema, connect, replication_map
    from cstore.config import load_config
    points, port = cassandra_endpoint
    cfg = load_config({"contact_points": ",".join(points), "port": port, "keyspace": TEST_KEYSPACE}, env={})
    with connect(cfg) as backend:
        apply_schema(backend, TEST_KEYSPACE, replication_map(cfg), log=lambda m: None)
    return cfg


@pytest.fixture(scope="session")
def backend(base_config):
    """A connection (cstore's storage boundary) in the test keyspace."""
    from cstore.backend import connect
    with connect(base_config, keyspace=TEST_KEYSPACE) as b:
        yield b


@pytest.fixture(scope="session")
def session(backend):
    """The raw driver session of that connection: tests read the database back with their own CQL."""
    return backend.session


@pytest.fixture(scope="module")
def store(base_config):
    """A connected Store in the test keyspace, shared by the tests of one module."""
    from cstore.store import Store
    s = Store.from_config(base_config)
    yield s
    s.close()


@pytest.fixture
def unique_name():
    return "t_" + uuid.uuid4().hex[:12]
