"""`chexstack kafka up|down|status|topics`: the development and embedded-default broker."""

from __future__ import annotations

from pathlib import Path

import typer

from chexstack.settings import KafkaOpt, TopicPrefixOpt, env_name

kafka_app = typer.Typer(
    help="Run a real single-node Kafka broker (KRaft) on 127.0.0.1.", no_args_is_help=True
)

DataDirOpt = typer.Option(
    None,
    "--data-dir",
    envvar=env_name("--kafka-data-dir"),
    show_envvar=True,
    help="Broker state directory. Default: $CHEXSTACK_HOME/kafka.",
)
PortOpt = typer.Option(
    9092,
    "--port",
    envvar=env_name("--kafka-port"),
    show_envvar=True,
    min=1,
    max=65534,
    help="Client port; the KRaft controller uses port+1.",
)


def _broker(data_dir: Path | None, port: int):  # type: ignore[no-untyped-def]
    from chexstack.broker import Broker, default_data_dir

    return Broker(data_dir or default_data_dir(), port=port)


@kafka_app.command("up")
def up(
    data_dir: Path | None = DataDirOpt,
    port: int = PortOpt,
    heap: str = typer.Option("512m", "--heap", help="JVM heap size."),
    partitions: int = typer.Option(6, "--partitions", min=1, help="Partitions for the xray.* topics."),
    retention_ms: int = typer.Option(
        7 * 24 * 3600 * 1000, "--retention-ms", help="Retention of the xray.* topics."
    ),
    topic_prefix: str = TopicPrefixOpt,  # type: ignore[assignment]
) -> None:
    """Start the broker in the background and create the topics; returns once it accepts connections."""
    from chexstack.broker import BrokerError
    from chexstack.topics import ensure_topics

    broker = _broker(data_dir, port)
    try:
        state = broker.up(heap=heap)
    except BrokerError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    created = ensure_topics(broker.bootstrap, partitions, retention_ms, prefix=topic_prefix)
    typer.echo(f"kafka {state} on {broker.bootstrap} (data in {broker.data_dir})")
    if created:
        typer.echo("created topics: " + ", ".join(created))


@kafka_app.command("down")
def down(data_dir: Path | None = DataDirOpt, port: int = PortOpt) -> None:
    """Stop the broker started by `up`; its data stays in the data directory."""
    typer.echo(f"kafka {_broker(data_dir, port).down()}")


@kafka_app.command("status")
def status(data_dir: Path | None = DataDirOpt, port: int = PortOpt) -> None:
    """Exit 0 when the broker runs and accepts connections, 1 otherwise."""
    broker = _broker(data_dir, port)
    pid = broker.running_pid()
    ok = pid is not None and broker.accepts_connections()
    typer.echo(f"kafka {'running (pid ' + str(pid) + ')' if ok else 'not running'} on {broker.bootstrap}")
    raise typer.Exit(0 if ok else 1)


@kafka_app.command("topics")
def topics_cmd(
    kafka: str = KafkaOpt,  # type: ignore[assignment]
    partitions: int = typer.Option(6, "--partitions", min=1),
    retention_ms: int = typer.Option(7 * 24 * 3600 * 1000, "--retention-ms"),
    topic_prefix: str = TopicPrefixOpt,  # type: ignore[assignment]
) -> None:
    """Create the CheXStack topics on any broker (existing topics are left unchanged)."""
    from chexstack.topics import ensure_topics

    created = ensure_topics(kafka, partitions, retention_ms, prefix=topic_prefix)
    typer.echo("created topics: " + (", ".join(created) if created else "none (all exist)"))


def register(app: typer.Typer) -> None:
    app.add_typer(kafka_app, name="kafka")
