"""`chexstack kafka up|down|status|topics`: the development and embedded-default broker."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Final

import typer

from chexstack.settings import DEFAULT_KAFKA, DEFAULT_TOPIC_PREFIX, KafkaOpt, TopicPrefixOpt, option

if TYPE_CHECKING:
    from chexstack.broker import Broker

kafka_app = typer.Typer(
    help="Run a real single-node Kafka broker (KRaft) on 127.0.0.1.", no_args_is_help=True
)

# --kafka-data-dir and --kafka-port are the setting names (CHEXSTACK_KAFKA_DATA_DIR/PORT); the short
# --data-dir and --port stay as aliases.
DataDirOpt = Annotated[
    Path | None,
    option("--kafka-data-dir", "Broker state directory. Default: $CHEXSTACK_HOME/kafka.", alias="--data-dir"),
]
PortOpt = Annotated[
    int,
    option(
        "--kafka-port",
        "Client port; the KRaft controller uses port+1.",
        alias="--port",
        min=1,
        max=65534,
    ),
]
DEFAULT_PORT: Final = 9092
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


def _broker(data_dir: Path | None, port: int, auth: bool = False) -> Broker:
    from chexstack.broker import Broker, default_data_dir

    return Broker(data_dir or default_data_dir(), port=port, auth=auth)


@kafka_app.command("up")
def up(
    data_dir: DataDirOpt = None,
    port: PortOpt = DEFAULT_PORT,
    heap: Annotated[str, option("--heap", "JVM heap size.")] = "512m",
    partitions: PartitionsOpt = DEFAULT_PARTITIONS,
    retention_ms: RetentionMsOpt = DEFAULT_RETENTION_MS,
    topic_prefix: TopicPrefixOpt = DEFAULT_TOPIC_PREFIX,
    auth: AuthOpt = False,
) -> None:
    """Start the broker in the background and create the topics; returns once it accepts connections.

    With --kafka-auth it also creates a SCRAM user per service and their ACLs (chexstack.kafka_auth)."""
    from chexstack import kafka_auth
    from chexstack.broker import BrokerError
    from chexstack.topics import Topics, ensure_topics

    broker = _broker(data_dir, port, auth)
    try:
        state = broker.up(heap=heap)
    except BrokerError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    admin = broker.admin_config()
    created = ensure_topics(broker.bootstrap, partitions, retention_ms, prefix=topic_prefix, security=admin)
    typer.echo(f"kafka {state} on {broker.bootstrap} (data in {broker.data_dir})")
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
def down(data_dir: DataDirOpt = None, port: PortOpt = DEFAULT_PORT) -> None:
    """Stop the broker started by `up`; its data stays in the data directory."""
    typer.echo(f"kafka {_broker(data_dir, port).down()}")


@kafka_app.command("status")
def status(data_dir: DataDirOpt = None, port: PortOpt = DEFAULT_PORT) -> None:
    """Exit 0 when the broker runs and accepts connections, 1 otherwise."""
    broker = _broker(data_dir, port)
    pid = broker.running_pid()
    ok = pid is not None and broker.accepts_connections()
    typer.echo(f"kafka {'running (pid ' + str(pid) + ')' if ok else 'not running'} on {broker.bootstrap}")
    raise typer.Exit(0 if ok else 1)


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
    created = ensure_topics(kafka, partitions, retention_ms, prefix=topic_prefix, security=admin)
    typer.echo("created topics: " + (", ".join(created) if created else "none (all exist)"))
    if passwords is not None:
        kafka_auth.apply(kafka, passwords, Topics(topic_prefix))
        typer.echo(f"users {', '.join(kafka_auth.SERVICES)} and their ACLs are in place")


def register(app: typer.Typer) -> None:
    app.add_typer(kafka_app, name="kafka")
