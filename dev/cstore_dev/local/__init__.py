"""A local Apache Cassandra 5.0 that the project runs itself (in the spirit of ccm).

The jars come from Maven Central (``org.apache.cassandra:cassandra-all``), each node gets
its own ``cassandra.yaml``, logback config and directories under ``.local/``, and runs on
the machine's Java 17 at 127.0.0.<i>:9042.
"""
from cstore_dev.local.cluster import LocalCluster, NodeStatus

__all__ = ["LocalCluster", "NodeStatus"]
