"""Driver errors become cstore errors that name the operation, the level and the replicas."""
from __future__ import annotations

import pytest
from cassandra import ConsistencyLevel, OperationTimedOut, Unavailable
from cassandra.cluster import NoHostAvailable
from cassandra.connection import ConnectionException

from cstore.errors import ConsistencyUnavailable
from cstore.params import replica_errors


def _unavailable() -> Unavailable:
    return Unavailable("Cannot achieve consistency level ALL", consistency=ConsistencyLevel.ALL,
                       required_replicas=3, alive_replicas=2)


def test_unavailable_names_level_and_replicas():
    with pytest.raises(ConsistencyUnavailable, match=r"read_model needs 3 replica\(s\) at consistency ALL but only 2"):
        with replica_errors("read_model"):
            raise _unavailable()


def test_unavailable_inside_no_host_available_is_still_explained():
    # What the driver raises when its retry policy tried a second host whose connection had just gone.
    exc = NoHostAvailable("Unable to complete the operation against any hosts",
                          {"127.0.0.12:9042": _unavailable(),
                           "127.0.0.11:9042": ConnectionException("Host has been marked down or removed")})
    with pytest.raises(ConsistencyUnavailable, match=r"consistency ALL but only 2 are alive"):
        with replica_errors("read_model"):
            raise exc


def test_no_host_available_without_replica_error_is_left_alone():
    exc = NoHostAvailable("Unable to connect", {"127.0.0.1:9042": ConnectionException("refused")})
    with pytest.raises(NoHostAvailable):
        with replica_errors("read_model"):
            raise exc


def test_client_side_timeout_becomes_a_cstore_error():
    with pytest.raises(ConsistencyUnavailable, match=r"read_model: the coordinator did not answer in time"):
        with replica_errors("read_model"):
            raise OperationTimedOut(errors={"127.0.0.1:9042": "Client request timeout"}, last_host="127.0.0.1:9042")
