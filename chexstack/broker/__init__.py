"""A real single-node Apache Kafka broker (KRaft) from Maven Central jars, run in the background.

`chexstack kafka up` fetches the jars once into the cache ($CHEXSTACK_CACHE/kafka-<version>), formats
KRaft storage in the data directory and starts `kafka.Kafka` on a local host:port (default
127.0.0.1:9092). State (pid, log, cluster id, server.properties with the broker's address) lives in the
data directory, so `down`, `status` and a later `up` find the broker and the address it listens on.
"""

from __future__ import annotations

import base64
import errno
import ipaddress
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from chexstack import kafka_auth
from chexstack.settings import default_cache, default_home

POM = resources.files("chexstack.broker") / "pom.xml"
LOG4J = resources.files("chexstack.broker") / "log4j2.yaml"


class BrokerError(RuntimeError):
    pass


def kafka_version() -> str:
    m = re.search(r"<kafka.version>([^<]+)</kafka.version>", POM.read_text())
    assert m, "pom.xml names no kafka.version"
    return m.group(1)


def new_cluster_id() -> str:
    """A random KRaft cluster id; like Kafka's own, never starting with "-" (read as an option)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def default_data_dir() -> Path:
    return default_home() / "kafka"


def local_address(kafka: str) -> tuple[str, int]:
    """(host, port) of `kafka` when it is one host:port this machine can listen on, else BrokerError.

    The broker listens where its clients connect, so its address is the shared --kafka setting; a list
    of brokers, a missing port or another machine's host cannot be the address of a broker started here.
    """
    if "," in kafka:
        raise BrokerError(f"{kafka!r} is a list of brokers: a broker started here has one host:port")
    host, sep, port_text = kafka.strip().rpartition(":")
    if not sep or not host:
        raise BrokerError(f"{kafka!r} is not host:port (e.g. 127.0.0.1:9092)")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65534:
        # 65534 at most: the KRaft controller listens on port+1.
        raise BrokerError(f"{kafka!r}: the port must be a number from 1 to 65534")
    if host in ("0.0.0.0", "::", "[::]"):
        raise BrokerError(f"{kafka!r}: a wildcard address is not one clients can connect to; use 127.0.0.1")
    try:
        with socket.socket() as s:
            s.bind((host, 0))
    except OSError as exc:
        raise BrokerError(f"{kafka!r}: {host} is not an address of this machine ({exc})") from exc
    # Without --kafka-auth the broker takes every connection: it must not be reachable from the network.
    if not ipaddress.ip_address(socket.gethostbyname(host)).is_loopback:
        raise BrokerError(
            f"{kafka!r}: a development broker listens on loopback only (127.0.0.1, localhost); "
            "the platform's broker (make up, chexstack_expose) is the one to expose"
        )
    return host, int(port_text)


def port_problem(host: str, port: int, what: str = "") -> str | None:
    """Why the broker cannot listen on host:port (another process holds it, ...), or None when it can.

    `what` says what the port is for, after its number: " (the KRaft controller's: ...)"."""
    try:
        with socket.socket() as s:
            # As the broker's own server socket: a port left in TIME_WAIT is free, a listener is not.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return f"port {port}{what} on {host} is taken by another process{_holder(port)}"
        return f"port {port}{what} on {host} cannot be used: {exc.strerror}"
    return None


def _holder(port: int) -> str:
    """Which of our brokers (found by /proc, as Broker.up starts them) holds `port`, if one does."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"kafka.Kafka" not in args[:-1]:
            continue
        # `kafka.Kafka <data dir>/server.properties`, as Broker.up starts it.
        data_dir = Path(os.fsdecode(args[args.index(b"kafka.Kafka") + 1])).parent
        address = recorded_address(data_dir)
        # Its client port, or its controller's (client port + 1).
        if address is not None and address.rpartition(":")[2] in (str(port), str(port - 1)):
            return f" (the broker of data dir {data_dir}, on {address})"
    return ""


def recorded_address(data_dir: Path) -> str | None:
    """host:port that the broker of `data_dir` was last started on (its server.properties), or None."""
    try:
        text = (data_dir / "server.properties").read_text()
    except (OSError, UnicodeDecodeError):
        return None
    m = re.search(r"^advertised\.listeners=\w+://(\S+)$", text, re.MULTILINE)
    return m.group(1) if m else None


def fetch_jars(cache: Path | None = None) -> Path:
    """Return the directory of broker jars, downloading them with Maven on first use."""
    libs = (cache or default_cache()) / f"kafka-{kafka_version()}" / "libs"
    if (libs / ".complete").exists():
        return libs
    for tool in ("mvn", "java"):
        if shutil.which(tool) is None:
            raise BrokerError(
                f"`{tool}` not found: the Kafka broker needs Java 17+ and Maven (apt-get install maven)"
            )
    libs.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=libs.parent) as tmp:
        pom = Path(tmp) / "pom.xml"
        pom.write_text(POM.read_text())
        out = Path(tmp) / "libs"
        cmd = [
            "mvn",
            "-q",
            "-B",
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={out}",
            "-DincludeScope=runtime",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise BrokerError(
                f"downloading Kafka {kafka_version()} jars with Maven failed:\n{proc.stdout}{proc.stderr}"
            )
        (out / ".complete").write_text(kafka_version() + "\n")
        if libs.exists():
            shutil.rmtree(libs)
        out.rename(libs)
    return libs


@dataclass(frozen=True)
class Broker:
    data_dir: Path
    port: int = 9092
    host: str = "127.0.0.1"
    auth: bool = False

    @classmethod
    def at(cls, data_dir: Path, kafka: str, auth: bool = False) -> Broker:
        """The broker of `data_dir` listening on `kafka` (one local host:port, see local_address)."""
        host, port = local_address(kafka)
        return cls(data_dir, port=port, host=host, auth=auth)

    @property
    def controller_port(self) -> int:
        return self.port + 1

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "broker.pid"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "broker.log"

    @property
    def users_dir(self) -> Path:
        return self.data_dir / "users"

    def passwords(self) -> dict[str, str]:
        """Every user's password (generated on first use); auth brokers only."""
        return kafka_auth.load_or_create_passwords(self.users_dir)

    def admin_config(self) -> dict[str, str]:
        """librdkafka settings of the admin user ({} without auth)."""
        if not self.auth:
            return {}
        return kafka_auth.sasl_config(kafka_auth.ADMIN, self.passwords()[kafka_auth.ADMIN])

    def client_env(self, user: str) -> dict[str, str]:
        """The environment a CheXStack client needs to connect as `user` ({} without auth)."""
        if not self.auth:
            return {}
        self.passwords()
        return {
            "CHEXSTACK_KAFKA_USER": user,
            "CHEXSTACK_KAFKA_PASSWORD_FILE": str(kafka_auth.password_file(self.users_dir, user)),
        }

    def _listener_properties(self) -> list[str]:
        controller = f"CONTROLLER://{self.host}:{self.controller_port}"
        if not self.auth:
            return [
                f"listeners=PLAINTEXT://{self.host}:{self.port},{controller}",
                f"advertised.listeners=PLAINTEXT://{self.host}:{self.port}",
                "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                "inter.broker.listener.name=PLAINTEXT",
            ]
        admin = kafka_auth.ADMIN
        password = self.passwords()[admin]
        plain = (
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'username="{admin}" password="{password}" user_{admin}="{password}";'
        )
        # The services log in with SCRAM (credentials in the KRaft metadata), the admin with PLAIN.
        return [
            f"listeners=BROKER://{self.host}:{self.port},{controller}",
            f"advertised.listeners=BROKER://{self.host}:{self.port}",
            "listener.security.protocol.map=CONTROLLER:SASL_PLAINTEXT,BROKER:SASL_PLAINTEXT",
            "inter.broker.listener.name=BROKER",
            f"sasl.mechanism.inter.broker.protocol={kafka_auth.ADMIN_MECHANISM}",
            f"sasl.mechanism.controller.protocol={kafka_auth.ADMIN_MECHANISM}",
            f"listener.name.broker.sasl.enabled.mechanisms={kafka_auth.ADMIN_MECHANISM},{kafka_auth.MECHANISM}",
            f"listener.name.controller.sasl.enabled.mechanisms={kafka_auth.ADMIN_MECHANISM}",
            f"listener.name.broker.plain.sasl.jaas.config={plain}",
            "listener.name.broker.scram-sha-512.sasl.jaas.config="
            "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            f"listener.name.controller.plain.sasl.jaas.config={plain}",
            "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            f"super.users=User:{admin}",
            "allow.everyone.if.no.acl.found=false",
        ]

    def _properties(self) -> str:
        logs = self.data_dir / "logs"
        return "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.bootstrap.servers={self.host}:{self.controller_port}",
                *self._listener_properties(),
                "controller.listener.names=CONTROLLER",
                f"log.dirs={logs}",
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=6",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "transaction.state.log.num.partitions=6",
                "share.coordinator.state.topic.replication.factor=1",
                "share.coordinator.state.topic.min.isr=1",
                # A single-node broker: rebalances need not wait for more members to join.
                "group.initial.rebalance.delay.ms=0",
                "num.partitions=6",
                "auto.create.topics.enable=false",
                "log.cleaner.backoff.ms=1000",
                "",
            ]
        )

    def running_pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid
        # A zombie or a reused pid is not our broker.
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return pid
        return pid if b"kafka.Kafka" in cmdline else None

    def running_address(self) -> str | None:
        """host:port of the broker running from this data directory (None when none runs).

        It may differ from `bootstrap`: the data directory's broker was started on another address."""
        if self.running_pid() is None:
            return None
        return recorded_address(self.data_dir) or self.bootstrap

    def accepts_connections(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1):
                return True
        except OSError:
            return False

    def up(self, timeout_s: float = 90.0, heap: str = "512m", cache: Path | None = None) -> str:
        """Start the broker (no-op when it already runs); returns once it answers metadata requests.

        Fails at once when this data directory's broker runs on another address, or when another process
        holds the port or the controller port (port+1)."""
        running = self.running_address()
        if running is not None and running != self.bootstrap:
            raise BrokerError(
                f"kafka in {self.data_dir} already runs on {running}, not {self.bootstrap}: "
                f"stop it first or use --kafka {running}"
            )
        if running is not None:
            self._wait_ready(timeout_s)
            return "already running"
        problem = port_problem(self.host, self.port) or port_problem(
            self.host, self.controller_port, " (the KRaft controller's: the client port + 1)"
        )
        if problem is not None:
            raise BrokerError(problem)
        libs = fetch_jars(cache)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        props = self.data_dir / "server.properties"
        # Holds the admin password with auth: readable by this user only, as the password files.
        fd = os.open(props, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(self._properties())
        cluster_file = self.data_dir / "cluster.id"
        if not cluster_file.exists():
            cluster_file.write_text(new_cluster_id() + "\n")
        cluster_id = cluster_file.read_text().strip()
        log4j = self.data_dir / "log4j2.yaml"
        log4j.write_text(LOG4J.read_text())
        classpath = f"{libs}/*"
        fmt = subprocess.run(
            [
                "java",
                "-cp",
                classpath,
                "kafka.tools.StorageTool",
                "format",
                "--standalone",
                f"--cluster-id={cluster_id}",
                "-c",
                str(props),
                "--ignore-formatted",
            ],
            capture_output=True,
            text=True,
        )
        if fmt.returncode != 0:
            raise BrokerError(
                f"formatting KRaft storage in {self.data_dir} failed:\n{fmt.stdout}{fmt.stderr}"
            )
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(
                [
                    "java",
                    f"-Xmx{heap}",
                    f"-Xms{heap}",
                    "-XX:+UseG1GC",
                    "-Djava.awt.headless=true",
                    f"-Dlog4j2.configurationFile={log4j}",
                    "-cp",
                    classpath,
                    "kafka.Kafka",
                    str(props),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # outlives the CLI; `down` stops it by pid
            )
        self.pid_file.write_text(f"{proc.pid}\n")
        try:
            self._wait_ready(timeout_s, proc)
        except BrokerError:
            self.down()
            raise
        return "started"

    def _wait_ready(self, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
        from confluent_kafka.admin import AdminClient

        from chexstack.bus import LibrdkafkaLogger

        # Refused connections while the broker starts are expected: its logger keeps them at DEBUG.
        config = {"bootstrap.servers": self.bootstrap, "logger": LibrdkafkaLogger(), **self.admin_config()}
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise BrokerError(
                    f"the broker exited with {proc.returncode}; see {self.log_file}:\n{self._tail()}"
                )
            if self.accepts_connections():
                try:
                    admin = AdminClient(config)
                    md = admin.list_topics(timeout=5)
                    if md.brokers:
                        return
                except Exception:
                    pass
            time.sleep(0.3)
        raise BrokerError(
            f"the broker did not answer on {self.bootstrap} within {timeout_s:.0f} s; see {self.log_file}"
        )

    def _tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def down(self, timeout_s: float = 30.0) -> str:
        pid = self.running_pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return "not running"
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.running_pid() is None:
                break
            time.sleep(0.2)
        else:
            os.kill(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        return "stopped"

    def kill(self) -> str:
        """SIGKILL, as a crash or a power cut would; the data stays for the next `up`."""
        pid = self.running_pid()
        if pid is None:
            return "not running"
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while self.running_pid() is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        self.pid_file.unlink(missing_ok=True)
        return "killed"

    def pause(self) -> None:
        """SIGSTOP: a hung broker, whose connections stay open and whose requests get no answer."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after `pause`."""
        self._signal(signal.SIGCONT)

    def _signal(self, sig: signal.Signals) -> None:
        pid = self.running_pid()
        if pid is None:
            raise BrokerError(f"no broker runs from {self.data_dir}")
        os.kill(pid, sig)
