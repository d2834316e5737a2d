"""Resolve Apache Cassandra's jars from Maven Central with ``mvn``.

The result is a classpath file cached under the local directory; it is rebuilt only when
the version changes or a listed jar disappeared (e.g. a wiped ~/.m2).
"""
from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from cstore_dev.errors import LocalClusterError

CASSANDRA_VERSION = os.environ.get("CSTORE_CASSANDRA_VERSION", "5.0.9")

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>cstore.local</groupId>
  <artifactId>cassandra-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.cassandra</groupId>
      <artifactId>cassandra-all</artifactId>
      <version>{version}</version>
    </dependency>
  </dependencies>
</project>
"""


def resolve_classpath(root: Path, version: str = CASSANDRA_VERSION,
                      log: Callable[[str], None] = print) -> list[str]:
    """Return the jar list for ``cassandra-all:version``, downloading it on first use."""
    work = root / f"cassandra-{version}"
    cp_file = work / "classpath.txt"
    if cp_file.is_file():
        jars = [j for j in cp_file.read_text().strip().split(os.pathsep) if j]
        if jars and all(Path(j).is_file() for j in jars):
            return jars
    mvn = shutil.which("mvn")
    if mvn is None:
        raise LocalClusterError("Maven (mvn) is not on PATH; install it (apt-get install maven) "
                                "or point cstore at an existing cluster with CSTORE_CONTACT_POINTS")
    work.mkdir(parents=True, exist_ok=True)
    (work / "pom.xml").write_text(_POM.format(version=version))
    log(f"resolving org.apache.cassandra:cassandra-all:{version} and its dependencies with Maven "
        f"(first run only) …")
    cmd = [mvn, "-q", "-B", "dependency:build-classpath", f"-Dmdep.outputFile={cp_file}"]
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
    if proc.returncode != 0 or not cp_file.is_file():
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise LocalClusterError(f"Maven could not resolve cassandra-all:{version} (exit {proc.returncode}).\n"
                                f"{tail}\nCheck that Maven Central is reachable, or set "
                                f"CSTORE_CONTACT_POINTS to use an existing cluster.")
    jars = [j for j in cp_file.read_text().strip().split(os.pathsep) if j]
    if not any("cassandra-all" in Path(j).name for j in jars):
        raise LocalClusterError(f"resolved classpath in {cp_file} has no cassandra-all jar")
    return jars
