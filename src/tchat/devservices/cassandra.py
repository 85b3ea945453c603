"""Apache Cassandra 5.0 from Maven Central jars, launched as a plain `java` process.

Cassandra stands in for ScyllaDB on machines without Docker: same CQL protocol,
same driver. The jars are fetched once with `mvn dependency:copy-dependencies`
into the user cache (outside the clone), so a fresh clone does not fetch again.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import textwrap
from pathlib import Path

from tchat.devservices.base import CACHE_DIR, Service, ServiceError


def java17() -> str | None:
    """A Java 17 to run Cassandra 5.0 on: JAVA_HOME's, the `java` on PATH, or Debian's
    openjdk-17 (a machine whose default java is newer may still have 17 installed)."""
    candidates = [os.path.join(os.environ.get("JAVA_HOME", "/nonexistent"), "bin", "java")]
    candidates.append(shutil.which("java") or "/nonexistent")
    candidates += sorted(str(p) for p in Path("/usr/lib/jvm").glob("java-17-openjdk-*/bin/java"))
    for java in candidates:
        if not os.access(java, os.X_OK):
            continue
        try:
            out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if re.search(r'version "17[."]', out.stderr + out.stdout):
            return java
    return None


VERSION = "5.0.8"
PORT = 9042

# From Cassandra's conf/jvm17-server.options (branch cassandra-5.0): the module
# flags Java 17 needs; the GC and logging flags there are tuning only.
_JAVA17_FLAGS = [
    "-Djdk.attach.allowAttachSelf=true",
    *(
        f"--add-exports={m}=ALL-UNNAMED"
        for m in (
            "java.base/jdk.internal.misc",
            "java.base/jdk.internal.ref",
            "java.base/sun.nio.ch",
            "java.management.rmi/com.sun.jmx.remote.internal.rmi",
            "java.rmi/sun.rmi.registry",
            "java.rmi/sun.rmi.server",
            "java.sql/java.sql",
            "java.base/java.lang.ref",
            "jdk.unsupported/sun.misc",
        )
    ),
    *(
        f"--add-opens={m}=ALL-UNNAMED"
        for m in (
            "java.base/java.lang.module",
            "java.base/jdk.internal.loader",
            "java.base/jdk.internal.ref",
            "java.base/jdk.internal.reflect",
            "java.base/jdk.internal.math",
            "java.base/jdk.internal.module",
            "java.base/jdk.internal.util.jar",
            "jdk.management/com.sun.management.internal",
            "java.base/sun.nio.ch",
            "java.base/java.io",
            "java.base/java.nio",
            "java.base/java.util.concurrent",
            "java.base/java.util",
            "java.base/java.util.concurrent.atomic",
            "java.base/java.lang",
            "java.base/java.math",
            "java.base/java.lang.reflect",
            "java.base/java.net",
        )
    ),
]

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>tchat.dev</groupId><artifactId>cassandra-jars</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies><dependency>
    <groupId>org.apache.cassandra</groupId><artifactId>cassandra-all</artifactId>
    <version>{version}</version>
  </dependency></dependencies>
</project>
"""


def _yaml(root: Path) -> str:
    return textwrap.dedent(
        f"""\
        cluster_name: tchat-dev
        num_tokens: 1
        partitioner: org.apache.cassandra.dht.Murmur3Partitioner
        endpoint_snitch: SimpleSnitch
        seed_provider:
          - class_name: org.apache.cassandra.locator.SimpleSeedProvider
            parameters:
              - seeds: "127.0.0.1:7000"
        listen_address: 127.0.0.1
        rpc_address: 127.0.0.1
        storage_port: 7000
        native_transport_port: {PORT}
        start_native_transport: true
        commitlog_sync: periodic
        commitlog_sync_period: 10000ms
        data_file_directories: ["{root}/data"]
        commitlog_directory: {root}/commitlog
        saved_caches_directory: {root}/saved_caches
        hints_directory: {root}/hints
        cdc_raw_directory: {root}/cdc_raw
        key_cache_size: 0MiB
        row_cache_size: 0MiB
        counter_cache_size: 0MiB
        concurrent_reads: 16
        concurrent_writes: 32
        native_transport_max_threads: 64
        batch_size_warn_threshold: 64KiB
        memtable_allocation_type: offheap_objects
        auto_snapshot: false
        authenticator: AllowAllAuthenticator
        authorizer: AllowAllAuthorizer
        """
    )


_LOGBACK = """<configuration>
  <appender name="FILE" class="ch.qos.logback.core.FileAppender">
    <file>{logdir}/system.log</file>
    <encoder><pattern>%-5level [%thread] %date{{ISO8601}} %logger{{0}}: %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="FILE"/></root>
</configuration>
"""


class CassandraService(Service):
    name = "cassandra"
    port = PORT
    ready_timeout_s = 240.0

    @property
    def lib_dir(self) -> Path:
        return CACHE_DIR / f"cassandra-{VERSION}" / "lib"

    def installed(self) -> bool:
        return (self.lib_dir / f"cassandra-all-{VERSION}.jar").exists()

    def install(self) -> None:
        if self.installed():
            return
        if not shutil.which("mvn"):
            raise ServiceError("cassandra: `mvn` not found (apt-get install maven)")
        work = CACHE_DIR / f"cassandra-{VERSION}"
        work.mkdir(parents=True, exist_ok=True)
        (work / "pom.xml").write_text(_POM.format(version=VERSION))
        self.log(f"fetching cassandra-all {VERSION} and its dependencies with mvn …")
        subprocess.run(
            [
                "mvn",
                "-q",
                "-B",
                "-f",
                str(work / "pom.xml"),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={self.lib_dir}",
            ],
            check=True,
        )

    def command(self) -> list[str]:
        java = java17()
        if java is None:
            raise ServiceError(
                "cassandra: no Java 17 found (JAVA_HOME, `java` on PATH, /usr/lib/jvm): "
                "apt-get install openjdk-17-jre-headless"
            )
        root = self.data_dir.resolve()
        for sub in ("data", "commitlog", "saved_caches", "hints", "cdc_raw", "logs"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        (root / "cassandra.yaml").write_text(_yaml(root))
        (root / "logback.xml").write_text(_LOGBACK.format(logdir=root / "logs"))
        jamm = self.lib_dir / "jamm-0.4.0.jar"
        return [
            java,
            "-Xms1G",
            "-Xmx1G",
            "-Xss512k",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",  # young pauses land in the CQL p99 (gc.log shows them)
            "-XX:+AlwaysPreTouch",
            "-XX:+ExitOnOutOfMemoryError",
            f"-Xlog:gc:file={root}/logs/gc.log:time,uptime:filecount=2,filesize=10M",
            *_JAVA17_FLAGS,
            *([f"-javaagent:{jamm}"] if jamm.exists() else []),
            f"-Dcassandra.config=file://{root}/cassandra.yaml",
            f"-Dcassandra.storagedir={root}",
            f"-Dcassandra.logdir={root}/logs",
            f"-Dlogback.configurationFile=file://{root}/logback.xml",
            "-Dcassandra-foreground=yes",
            "-Dcassandra.skip_wait_for_gossip_to_settle=0",
            "-Dcassandra.ring_delay_ms=100",
            "-Dcassandra.load_ring_state=false",
            "-Dcassandra.superuser_setup_delay_ms=0",
            "-cp",
            f"{self.lib_dir}/*",
            "org.apache.cassandra.service.CassandraDaemon",
        ]

    def probe(self) -> str:
        with socket.create_connection(("127.0.0.1", PORT), timeout=1.0):
            pass
        from cassandra.cluster import Cluster

        cluster = Cluster(["127.0.0.1"], port=PORT, connect_timeout=3, control_connection_timeout=3)
        try:
            session = cluster.connect()
            row = session.execute("SELECT release_version FROM system.local").one()
            return f"Cassandra {row.release_version} (CQL) on 127.0.0.1:{PORT}"
        finally:
            cluster.shutdown()
