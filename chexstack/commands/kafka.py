"""`chexstack kafka up|down|status|topics`: the development and embedded-default broker."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Final

import typer

from chexstack.settings import DEFAULT_KAFKA, DEFAULT_TOPIC_PREFIX, KafkaOpt, TopicPrefixOpt, option

if TYPE_CHECKING:
    from chexstack.broker import Broker

kafka_app = typer.Typer(
    help="Run a real single-node Kafka broker (KRaft) on this machine, at --kafka (default 127.0.0.1:9092).",
    no_args_is_help=True,
)

# --kafka-data-dir is the setting's name (CHEXSTACK_KAFKA_DATA_DIR); the short --data-dir stays as an alias.
# The broker's address is the shared --kafka (CHEXSTACK_KAFKA): it listens where the clients connect.
DataDirOpt = Annotated[
    Path | None,
    option("--kafka-data-dir", "Broker state directory. Default: $CHEXSTACK_HOME/kafka.", alias="--data-dir"),
]
PartitionsOpt = Annotated[int, option("--partitions", "Partitions for the xray.* topics.", min=1)]
DEFAULT_PARTITIONS: Final = 6
RetentionMsOpt = Annotated[int, option("--retention-ms", "Retention of the xray.* topics.")]
DEFAULT_RETENTION_MS: Final = 7 * 24 * 3600 * 1000


AuthOpt = Annotated[
    bool,
    option(
        "--kafka-auth/--no-kafka-auth",
        "SASL/SCRAM with a user per service and ACLs (passwords in <data dir>/users, 0600).",
        alias="--auth",
    ),
]


def _broker(data_dir: Path | None, kafka: str, auth: bool = False) -> Broker:
    """The broker of the data directory on the --kafka address; a bad --kafka exits 2 with one line."""
    from chexstack.broker import Broker, BrokerError, default_data_dir

    try:
        return Broker.at((data_dir or default_data_dir()).absolute(), kafka, auth=auth)
    except BrokerError as exc:
        typer.echo(f"error: --kafka {exc}", err=True)
        raise typer.Exit(2) from exc


@kafka_app.command("up")
def up(
    data_dir: DataDirOpt = None,
    kafka: KafkaOpt = DEFAULT_KAFKA,
    heap: Annotated[str, option("--heap", "JVM heap size.")] = "512m",
    partitions: PartitionsOpt = DEFAULT_PARTITIONS,
    retention_ms: RetentionMsOpt = DEFAULT_RETENTION_MS,
    topic_prefix: TopicPrefixOpt = DEFAULT_TOPIC_PREFIX,
    auth: AuthOpt = False,
) -> None:
    """Start the broker in the background and create the topics; returns once it accepts connections.

    The broker listens on --kafka (one host:port of this machine; its KRaft controller on port+1).
    A data directory whose broker already runs on another address, or a port held by another
    process, fails at once. With --kafka-auth it also creates a SCRAM user per service and their
    ACLs (chexstack.kafka_auth)."""
    from chexstack import kafka_auth
    from chexstack.broker import BrokerError
    from chexstack.topics import Topics, ensure_topics

    broker = _broker(data_dir, kafka, auth)
    try:
        state = broker.up(heap=heap)
    except BrokerError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    admin = broker.admin_config()
    created = ensure_topics(broker.bootstrap, partitions, retention_ms, prefix=topic_prefix, security=admin)
    typer.echo(f"kafka {state} on {broker.bootstrap}, data in {broker.data_dir}")
    if created:
        typer.echo("created topics: " + ", ".join(created))
    if auth:
        passwords = broker.passwords()
        kafka_auth.apply(broker.bootstrap, passwords, Topics(topic_prefix))
        typer.echo(
            f"users {', '.join(kafka_auth.USERS)} and their ACLs are in place; passwords in "
            f"{broker.users_dir}. Connect as a user with:"
        )
        env = broker.client_env(kafka_auth.ADMIN)
        typer.echo("  export " + " ".join(f"{k}={v}" for k, v in env.items()))


@kafka_app.command("down")
def down(data_dir: DataDirOpt = None, kafka: KafkaOpt = DEFAULT_KAFKA) -> None:
    """Stop the data directory's broker, on whichever address it runs; its data stays."""
    from chexstack.broker import Broker, BrokerError, default_data_dir, recorded_address

    # The data directory finds the broker: a CHEXSTACK_KAFKA that names another machine or a list (a
    # client setting) must not keep it running. Its recorded address stands in for such a --kafka.
    directory = (data_dir or default_data_dir()).absolute()
    recorded = recorded_address(directory)
    try:
        broker = Broker.at(directory, kafka)
    except BrokerError:
        broker = _broker(directory, recorded or kafka)  # without one, the error line for --kafka
    pid = broker.running_pid()
    address = broker.running_address()
    if pid is None or address is None:
        broker.down()  # clears a stale pid file
        typer.echo(f"kafka not running in {broker.data_dir} ({broker.bootstrap})")
        return
    broker.down()
    other = "" if address == broker.bootstrap else f" (not {broker.bootstrap})"
    typer.echo(f"kafka stopped (pid {pid}) on {address}{other}, data in {broker.data_dir}")


@kafka_app.command("status")
def status(data_dir: DataDirOpt = None, kafka: KafkaOpt = DEFAULT_KAFKA) -> None:
    """Exit 0 when the data directory's broker runs on --kafka and accepts connections, 1 otherwise."""
    from chexstack.broker import port_problem

    broker = _broker(data_dir, kafka)
    pid = broker.running_pid()
    address = broker.running_address()
    if pid is None or address is None:
        # Say so when something else answers there (e.g. the platform's broker): it is not this one.
        held = port_problem(broker.host, broker.port) if broker.accepts_connections() else None
        typer.echo(
            f"kafka not running in {broker.data_dir} ({broker.bootstrap})" + (f"; {held}" if held else "")
        )
        raise typer.Exit(1)
    if address != broker.bootstrap:
        typer.echo(
            f"kafka running (pid {pid}) on {address}, not {broker.bootstrap}, data in {broker.data_dir}"
        )
        raise typer.Exit(1)
    if not broker.accepts_connections():
        typer.echo(f"kafka starting (pid {pid}) on {address}, no connections yet, data in {broker.data_dir}")
        raise typer.Exit(1)
    typer.echo(f"kafka running (pid {pid}) on {address}, data in {broker.data_dir}")


# How long `kafka topics` waits for a TCP connection to a broker before it gives up.
CONNECT_TIMEOUT_S: Final = 5.0


def _unreachable(kafka: str) -> str | None:
    """Why no broker in `kafka` takes a TCP connection, or None when one does.

    librdkafka retries a closed port for its whole request timeout, logging every try to stderr; a plain
    connect fails at once and says why."""
    failures = []
    for server in kafka.split(","):
        address = server.strip().split("://")[-1]  # a listener name prefix (PLAINTEXT://) is allowed
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            failures.append(f"{address} (not host:port)")
            continue
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S):
                return None
        except OSError as exc:
            failures.append(f"{address} ({exc.strerror or exc})")
    return "cannot connect to Kafka at " + ", ".join(failures)


UsersDirOpt = Annotated[
    Path | None,
    option(
        "--users-dir",
        "Directory of <user>.password files (admin and each service): connect as admin and also set "
        "the services' SCRAM credentials and ACLs.",
    ),
]


@kafka_app.command("topics")
def topics_cmd(
    kafka: KafkaOpt = DEFAULT_KAFKA,
    partitions: PartitionsOpt = DEFAULT_PARTITIONS,
    retention_ms: RetentionMsOpt = DEFAULT_RETENTION_MS,
    topic_prefix: TopicPrefixOpt = DEFAULT_TOPIC_PREFIX,
    users_dir: UsersDirOpt = None,
) -> None:
    """Create the CheXStack topics on any broker (existing topics are left unchanged).

    With --users-dir (the platform's kafka role) also upsert the services' users and their ACLs."""
    from chexstack import kafka_auth
    from chexstack.topics import Topics, ensure_topics

    passwords = None
    admin = None  # the caller's own login (CHEXSTACK_KAFKA_USER)
    if users_dir is not None:
        try:
            passwords = kafka_auth.read_passwords(users_dir)
        except ValueError as exc:
            typer.echo(f"error: --users-dir {users_dir}: {exc}", err=True)
            raise typer.Exit(2) from exc
        admin = kafka_auth.sasl_config(kafka_auth.ADMIN, passwords[kafka_auth.ADMIN])
    unreachable = _unreachable(kafka)
    if unreachable is not None:
        typer.echo(f"error: {unreachable}", err=True)
        raise typer.Exit(1)
    created = ensure_topics(kafka, partitions, retention_ms, prefix=topic_prefix, security=admin)
    typer.echo("created topics: " + (", ".join(created) if created else "none (all exist)"))
    if passwords is not None:
        kafka_auth.apply(kafka, passwords, Topics(topic_prefix))
        typer.echo(f"users {', '.join(kafka_auth.SERVICES)} and their ACLs are in place")


def register(app: typer.Typer) -> None:
    app.add_typer(kafka_app, name="kafka")
