"""The one translation point: driver errors become cstore errors that name the condition, the
operation, the level and the replicas; distinct conditions get distinct types."""
from __future__ import annotations

import pytest
from cassandra import ConsistencyLevel, OperationTimedOut, ReadTimeout, Unavailable, WriteTimeout, WriteType
from cassandra.cluster import NoHostAvailable
from cassandra.connection import ConnectionException

from cstore.backend._errors import translated
from cstore.errors import (ClusterUnreachable, ConsistencyUnavailable, CoordinatorTimeout, ReplicaTimeout,
                           TransientError, UnknownOutcome)


def _unavailable() -> Unavailable:
    return Unavailable("Cannot achieve consistency level ALL", consistency=ConsistencyLevel.ALL,
                       required_replicas=3, alive_replicas=2)


def test_unavailable_names_level_and_replicas():
    with pytest.raises(ConsistencyUnavailable, match=r"read_model needs 3 replica\(s\) at consistency ALL but only 2"):
        with translated("read_model"):
            raise _unavailable()


def test_unavailable_carries_its_fields():
    with pytest.raises(ConsistencyUnavailable) as exc:
        with translated("read_model"):
            raise _unavailable()
    assert (exc.value.operation, exc.value.consistency, exc.value.required, exc.value.alive) == \
        ("read_model", "ALL", 3, 2)


def test_unavailable_inside_no_host_available_is_still_explained():
    # What the driver raises when its retry policy tried a second host whose connection had just gone.
    exc = NoHostAvailable("Unable to complete the operation against any hosts",
                          {"127.0.0.12:9042": _unavailable(),
                           "127.0.0.11:9042": ConnectionException("Host has been marked down or removed")})
    with pytest.raises(ConsistencyUnavailable, match=r"consistency ALL but only 2 are alive"):
        with translated("read_model"):
            raise exc


def test_no_host_available_without_replica_error_is_an_unreachable_cluster():
    exc = NoHostAvailable("Unable to connect", {"127.0.0.1:9042": ConnectionException("refused")})
    with pytest.raises(ClusterUnreachable, match=r"read_model: no Cassandra node could take the request"):
        with translated("read_model"):
            raise exc


def test_client_side_timeout_is_a_coordinator_timeout():
    with pytest.raises(CoordinatorTimeout, match=r"read_model: the coordinator did not answer in time"):
        with translated("read_model"):
            raise OperationTimedOut(errors={"127.0.0.1:9042": "Client request timeout"}, last_host="127.0.0.1:9042")


def test_replica_timeout_is_not_a_dead_replica():
    with pytest.raises(ReplicaTimeout, match=r"read_model timed out at consistency QUORUM: 1 of 2") as exc:
        with translated("read_model"):
            raise ReadTimeout("timed out", consistency=ConsistencyLevel.QUORUM, received_responses=1,
                              required_responses=2, data_retrieved=False)
    assert not isinstance(exc.value, ConsistencyUnavailable) and (exc.value.received, exc.value.required) == (1, 2)


def test_a_timed_out_compare_and_set_is_an_unknown_outcome_never_a_transient_error():
    with pytest.raises(UnknownOutcome) as exc:
        with translated("commit_chunk"):
            raise WriteTimeout("timed out", consistency=ConsistencyLevel.SERIAL, received_responses=0,
                               required_responses=1, write_type=WriteType.CAS)
    assert not isinstance(exc.value, TransientError)


def test_transient_errors_share_a_base():
    for cls in (ConsistencyUnavailable, ReplicaTimeout, CoordinatorTimeout, ClusterUnreachable):
        assert issubclass(cls, TransientError)
