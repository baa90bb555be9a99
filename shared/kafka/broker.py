"""A local single-node Apache Kafka broker (KRaft, broker + controller in one JVM).

``LocalBroker`` runs the jars that ``make kafka-jars`` fetched: it formats the storage once with
``kafka.tools.StorageTool``, writes ``server.properties``, starts ``kafka.Kafka`` detached (its own
session, so it outlives the command that started it) with a pid file and a log file in the data
directory, and waits until the broker answers an ApiVersions request. ``stop()`` sends SIGTERM,
then SIGKILL after a timeout, and removes the pid file.

With ``tls`` (``BrokerTls``; set up by ``shared.kafka.secure_broker``) the same broker is closed to
strangers: clients use a SASL_SSL listener (SCRAM), the broker's own traffic (controller, inter-broker)
uses mutual-TLS listeners where its certificate is its identity, and the standard authorizer
(``StandardAuthorizer``, ACLs in the metadata log) denies whatever no ACL allows.

``server_properties`` is built from parts (node, listeners, security, storage, limits) so a
multi-node variant changes the node id, the voters and the internal topics' replication only.

Layout of the data directory: ``server.properties``, ``broker.pid``, ``broker.log`` and
``kraft/`` (the broker's log.dirs).
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from shared.errors import BrokerError
from shared.limits import KAFKA_MAX_MESSAGE_BYTES
from shared.settings import BrokerSettings

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_LOG4J_CONFIG = REPO_ROOT / "deploy" / "kafka" / "log4j2.xml"
MIN_JAVA = 17  # Kafka 4 brokers need Java 17+


# The standard authorizer of KRaft clusters: ACLs live in the metadata log.
STANDARD_AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
SCRAM_LOGIN_MODULE = "org.apache.kafka.common.security.scram.ScramLoginModule"
# A certificate's principal is its common name (CN=broker -> User:broker), else the whole DN.
SSL_PRINCIPAL_RULES = "RULE:^CN=([A-Za-z0-9._-]+)$/$1/,DEFAULT"


@dataclass(frozen=True)
class BrokerTls:
    """The broker side of a secure broker: its PEM key store and trust store, its principal (its
    certificate's CN, a super user), the SASL mechanisms clients may use, and the SCRAM credentials
    to format new storage with (a file of ``--add-scram`` arguments, owner-only, deleted after use)."""

    keystore: Path
    truststore: Path
    principal: str = "broker"
    sasl_mechanisms: tuple[str, ...] = ("SCRAM-SHA-512", "SCRAM-SHA-256")
    scram_arguments_file: Path | None = None

    def client_context(self) -> ssl.SSLContext:
        """A TLS context that trusts this broker's CA (for the readiness probe)."""
        return ssl.create_default_context(cafile=str(self.truststore))


@dataclass(frozen=True)
class BrokerStatus:
    running: bool  # a live process matches the pid file
    ready: bool  # and it answers Kafka requests on its port
    pid: int | None
    bootstrap: str
    data_dir: Path
    log_file: Path


def _new_cluster_id() -> str:
    """A random KRaft cluster id. Like Kafka's own ``Uuid.randomUuid``, never one that starts with
    '-': the storage tool's argument parser would read it as an option and fail."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


def with_free_ports(settings: BrokerSettings) -> BrokerSettings:
    """``settings`` moved to free ports (client, controller, internal): for tests and benchmarks."""
    client, controller, internal = free_ports(3)
    ports = {"port": client, "controller_port": controller, "internal_port": internal}
    return settings.model_copy(update=ports)


def free_port() -> int:
    """A TCP port on localhost that nothing listens on right now."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports: all held open while choosing, since the kernel may hand out a
    port just released again (two calls of ``free_port`` can return the same one)."""
    with contextlib.ExitStack() as stack:
        sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
        for sock in sockets:
            stack.enter_context(sock)
            sock.bind(("localhost", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


class LocalBroker:
    @classmethod
    def on_free_ports(cls, data_dir: Path, libs_dir: Path, heap: str = "512m") -> LocalBroker:
        """A throw-away broker for tests and benchmarks: free client and controller ports."""
        return cls(with_free_ports(BrokerSettings(data_dir=data_dir, libs_dir=libs_dir, heap=heap)))

    def __init__(
        self, settings: BrokerSettings, libs_dir: Path | None = None, *, tls: BrokerTls | None = None
    ) -> None:
        self.settings = settings
        self.libs_dir = Path(libs_dir if libs_dir is not None else settings.libs_dir).resolve()
        self.data_dir = Path(settings.data_dir).resolve()
        self.pid_file = self.data_dir / "broker.pid"
        self.log_file = self.data_dir / "broker.log"
        self.properties_file = self.data_dir / "server.properties"
        self.log_dirs = self.data_dir / "kraft"
        self.host = "localhost"
        self.tls = tls
        self._process: subprocess.Popen[bytes] | None = None  # kept to reap it when we started it

    # ---- paths ----
    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.settings.port}"

    @property
    def internal_bootstrap(self) -> str:
        """The broker's own mutual-TLS listener (secure brokers only)."""
        return f"{self.host}:{self.settings.internal_port}"

    def _ports(self) -> tuple[int, ...]:
        s = self.settings
        return (s.port, s.controller_port, s.internal_port) if self.tls else (s.port, s.controller_port)

    # ---- lifecycle ----
    def start(self, *, wait: bool = True) -> BrokerStatus:
        """Start the broker (formatting storage on first use) and wait until it is ready.

        Returns at once if this data directory's broker is already running and ready. With
        ``wait=False`` it returns once the process runs: a cluster's nodes answer only after a
        quorum of them started, so ``shared.kafka.cluster`` starts all, then waits for each.
        """
        current = self.status()
        if current.running:
            if current.ready or not wait:
                return current
            self._wait_ready(current.pid)
            return self.status()
        java = find_java()
        classpath = self._classpath()
        for port in self._ports():
            if _port_open(self.host, port):
                raise BrokerError(
                    f"port {port} is already in use; choose others with --port/--controller-port"
                    + ("/--internal-port" if self.tls else "")
                )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.properties_file.write_text(self.server_properties())
        if not (self.log_dirs / "meta.properties").exists():
            self._format_storage(java, classpath)
        with open(self.log_file, "ab") as log:
            process = subprocess.Popen(
                [*self._java_command(java, classpath), "kafka.Kafka", str(self.properties_file)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # detached: `lineguard kafka up` returns, the broker stays
                cwd=self.data_dir,
            )
        self._process = process
        self.pid_file.write_text(f"{process.pid}\n")
        if not wait:
            return self.status()
        try:
            self._wait_ready(process.pid, process)
        except BaseException:
            self.stop()
            raise
        return self.status()

    def stop(self, timeout_s: float | None = None) -> bool:
        """Stop the broker: SIGTERM, then SIGKILL after ``timeout_s``. True if one was running."""
        timeout_s = self.settings.stop_timeout_s if timeout_s is None else timeout_s
        pid = self._read_pid()
        if pid is None or not _is_our_broker(pid, self.properties_file):
            self.pid_file.unlink(missing_ok=True)
            return False
        _signal_group(pid, signal.SIGTERM)
        if not _wait_exit(pid, timeout_s):
            _signal_group(pid, signal.SIGKILL)
            _wait_exit(pid, 10.0)
        self.pid_file.unlink(missing_ok=True)
        if self._process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=1)
            self._process = None
        return True

    def status(self) -> BrokerStatus:
        pid = self._read_pid()
        running = pid is not None and _is_our_broker(pid, self.properties_file)
        ready = running and self._answers()
        return BrokerStatus(
            running=running,
            ready=ready,
            pid=pid if running else None,
            bootstrap=self.bootstrap,
            data_dir=self.data_dir,
            log_file=self.log_file,
        )

    # ---- configuration ----
    def server_properties(self) -> str:
        props = {
            **self._node_properties(),
            **self._listener_properties(),
            **self._security_properties(),
            **self._storage_properties(),
        }
        header = "# Generated by lineguard (shared/kafka/broker.py) on every start; edits are lost.\n"
        return header + "".join(f"{k}={v}\n" for k, v in props.items())

    def _node_properties(self) -> dict[str, str]:
        return {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{self.host}:{self.settings.controller_port}",
        }

    def _listener_properties(self) -> dict[str, str]:
        s, host = self.settings, self.host
        if self.tls is None:
            return {
                "listeners": f"PLAINTEXT://{host}:{s.port},CONTROLLER://{host}:{s.controller_port}",
                "advertised.listeners": f"PLAINTEXT://{host}:{s.port}",
                "controller.listener.names": "CONTROLLER",
                "inter.broker.listener.name": "PLAINTEXT",
                "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            }
        # Clients: SASL over TLS. The broker's own traffic: TLS where both ends show a certificate.
        return {
            "listeners": (
                f"CLIENT://{host}:{s.port},INTERNAL://{host}:{s.internal_port},"
                f"CONTROLLER://{host}:{s.controller_port}"
            ),
            "advertised.listeners": f"CLIENT://{host}:{s.port},INTERNAL://{host}:{s.internal_port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "INTERNAL",
            "listener.security.protocol.map": "CLIENT:SASL_SSL,INTERNAL:SSL,CONTROLLER:SSL",
        }

    def _security_properties(self) -> dict[str, str]:
        tls = self.tls
        if tls is None:
            return {}
        props = {
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(tls.keystore),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(tls.truststore),
            "ssl.enabled.protocols": "TLSv1.3,TLSv1.2",
            "ssl.endpoint.identification.algorithm": "https",  # the broker checks names too
            "listener.name.internal.ssl.client.auth": "required",
            "listener.name.controller.ssl.client.auth": "required",
            "ssl.principal.mapping.rules": SSL_PRINCIPAL_RULES,
            "sasl.enabled.mechanisms": ",".join(tls.sasl_mechanisms),
            "authorizer.class.name": STANDARD_AUTHORIZER,
            "allow.everyone.if.no.acl.found": "false",
            "super.users": f"User:{tls.principal}",
        }
        for mechanism in tls.sasl_mechanisms:
            props[f"listener.name.client.{mechanism.lower()}.sasl.jaas.config"] = (
                f"{SCRAM_LOGIN_MODULE} required;"
            )
        return props

    def _storage_properties(self) -> dict[str, str]:
        return {
            "log.dirs": str(self.log_dirs),
            # Single node: every internal topic has one replica (a cluster: settings.kafka's).
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            # Fewer internal partitions and threads: this runs beside the scorer on two cores.
            "offsets.topic.num.partitions": "8",
            "transaction.state.log.num.partitions": "8",
            "num.network.threads": "2",
            "num.io.threads": "4",
            "num.recovery.threads.per.data.dir": "1",
            "log.cleaner.threads": "1",
            "log.cleaner.dedupe.buffer.size": str(16 << 20),
            "num.partitions": "1",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "false",  # topics come from `lineguard topics ensure`
            "message.max.bytes": str(KAFKA_MAX_MESSAGE_BYTES),
            "replica.fetch.max.bytes": str(KAFKA_MAX_MESSAGE_BYTES),
            "socket.request.max.bytes": str(max(100 << 20, 2 * KAFKA_MAX_MESSAGE_BYTES)),
        }

    def _answers(self) -> bool:
        context = self.tls.client_context() if self.tls is not None else None
        return api_versions_ok(self.host, self.settings.port, ssl_context=context)

    def _classpath(self) -> str:
        if not any(self.libs_dir.glob("kafka_2.13-*.jar")):
            raise BrokerError(f"no Kafka jars in {self.libs_dir}; run `make kafka-jars` first")
        return str(self.libs_dir / "*")

    def _java_command(self, java: str, classpath: str) -> list[str]:
        heap = self.settings.heap
        command = [
            java,
            f"-Xms{heap}",
            f"-Xmx{heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError",
            "-XX:CICompilerCount=2",  # a small JIT: the machine has two cores
            "-Djava.awt.headless=true",
            f"-Dkafka.logs.dir={self.data_dir}",
        ]
        if DEFAULT_LOG4J_CONFIG.exists():
            command.append(f"-Dlog4j2.configurationFile={DEFAULT_LOG4J_CONFIG}")
        return [*command, "-cp", classpath]

    def wait_ready(self) -> BrokerStatus:
        """Wait until a broker started with ``start(wait=False)`` answers (stopping it on failure)."""
        try:
            self._wait_ready(self._read_pid(), self._process)
        except BaseException:
            self.stop()
            raise
        return self.status()

    def _cluster_id(self) -> str:
        """The KRaft cluster id storage is formatted with (a cluster's nodes share one)."""
        return _new_cluster_id()

    def _format_storage(self, java: str, classpath: str) -> None:
        cluster_id = self._cluster_id()
        command = [
            *self._java_command(java, classpath),
            "kafka.tools.StorageTool",
            "format",
            "--cluster-id",
            cluster_id,
            "--config",
            str(self.properties_file),
            "--ignore-formatted",
        ]
        scram = self.tls.scram_arguments_file if self.tls is not None else None
        if scram is not None:
            # The storage tool reads "@file" as more arguments: the credentials stay off the
            # command line (and out of `ps`).
            command.append(f"@{scram}")
        # The formatter is a short JVM; give it a small heap, not the broker's.
        command = [c for c in command if not c.startswith(("-Xms", "-Xmx"))]
        command.insert(1, "-Xmx256m")
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
            raise BrokerError(f"formatting Kafka storage in {self.log_dirs} failed:\n{tail}")

    def _read_pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def _wait_ready(self, pid: int | None, process: subprocess.Popen[bytes] | None = None) -> None:
        """Poll until the broker answers on its port; fail early if its process dies."""
        deadline = time.monotonic() + self.settings.start_timeout_s
        delay = 0.05
        while time.monotonic() < deadline:
            exited = process.poll() is not None if process is not None else not _alive(pid)
            if exited:
                raise BrokerError(
                    f"Kafka exited during start-up; last lines of {self.log_file}:\n{self._log_tail()}"
                )
            if self._answers():
                return
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)
        waited = self.settings.start_timeout_s
        raise BrokerError(f"Kafka not ready after {waited}s; see {self.log_file}:\n{self._log_tail()}")

    def _log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.strip().splitlines()[-lines:])


# ---- process helpers ------------------------------------------------------------------------


def find_java() -> str:
    """The java binary from JAVA_HOME, else PATH; it must be Java 17 or newer."""
    java_home = os.environ.get("JAVA_HOME")
    candidate = Path(java_home) / "bin" / "java" if java_home else None
    java = str(candidate) if candidate and candidate.exists() else shutil.which("java")
    if not java:
        raise BrokerError("no Java found: install a JDK 17+ or set JAVA_HOME")
    result = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30, check=False)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', result.stderr + result.stdout)
    if not match:
        raise BrokerError(f"cannot tell the version of {java}")
    major = int(match.group(1))
    if major == 1 and match.group(2):  # "1.8" style
        major = int(match.group(2))
    if major < MIN_JAVA:
        raise BrokerError(f"{java} is Java {major}; Kafka 4 needs Java {MIN_JAVA} or newer")
    return java


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is not alive. /proc shows the thread-group leader, which can be a zombie while the
    # JVM's other threads are still shutting down; only a reaped child, or a leader with no other
    # threads left, has really exited.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    if state != "Z":
        return True
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child: its parent reaps it
        return _thread_count(pid) > 1
    return reaped == 0  # 0: our child has not exited as a whole yet


def _thread_count(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Threads:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _is_our_broker(pid: int, properties_file: Path) -> bool:
    """The pid is alive and is a kafka.Kafka started with this properties file (not a reused pid)."""
    if not _alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no /proc: trust the pid file
    return b"kafka.Kafka" in cmdline and str(properties_file).encode() in cmdline


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)  # the broker leads its own session; this also reaches any helpers
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _wait_exit(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return not _alive(pid)


def _port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def api_versions_ok(
    host: str, port: int, timeout_s: float = 2.0, *, ssl_context: ssl.SSLContext | None = None
) -> bool:
    """True if a Kafka broker at host:port answers ApiVersions (v0) without error; over TLS with
    ``ssl_context`` (a SASL listener answers ApiVersions before authentication).

    A raw request keeps this synchronous and free of an event loop; the broker only accepts
    client connections on its listener once it has finished starting.
    """
    correlation_id = 0x4C47  # "LG"
    client_id = b"lineguard-probe"
    # Request header v1: api_key=18 (ApiVersions), api_version=0, correlation id, client id.
    body = struct.pack(">hhih", 18, 0, correlation_id, len(client_id)) + client_id
    try:
        with contextlib.ExitStack() as closing:
            sock = closing.enter_context(socket.create_connection((host, port), timeout=timeout_s))
            if ssl_context is not None:
                sock = closing.enter_context(ssl_context.wrap_socket(sock, server_hostname=host))
            sock.sendall(struct.pack(">i", len(body)) + body)
            size = struct.unpack(">i", _recv_exact(sock, 4))[0]
            if not 6 <= size <= 1 << 20:
                return False
            reply = _recv_exact(sock, size)
    except (OSError, struct.error):  # ssl.SSLError is an OSError
        return False
    got_id, error_code = struct.unpack(">ih", reply[:6])
    return got_id == correlation_id and error_code == 0


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < n:
        chunk = sock.recv(n - len(chunks))
        if not chunk:
            raise OSError("connection closed")
        chunks += chunk
    return bytes(chunks)
