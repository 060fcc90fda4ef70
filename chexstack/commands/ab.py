"""`chexstack ab set|show`: A/B weights on the compacted control topic (routers follow live)."""

from __future__ import annotations

from typing import Annotated

import typer

from chexstack.settings import (
    DEFAULT_KAFKA,
    DEFAULT_SERVING,
    DEFAULT_TOPIC_PREFIX,
    HubOpt,
    KafkaOpt,
    ModelConfigFileOpt,
    ServingOpt,
    TopicPrefixOpt,
    default_hub,
)

ab_app = typer.Typer(
    help="A/B weights between model variants (TF Serving version labels).", no_args_is_help=True
)


@ab_app.command("set")
def set_weights(
    model_name: Annotated[str, typer.Argument(help="Model name, e.g. chexnet.")],
    weights: Annotated[
        list[str] | None, typer.Argument(help="NAME=WEIGHT ..., e.g. stable=90 canary=10; none = latest.")
    ] = None,
    kafka: KafkaOpt = DEFAULT_KAFKA,
    topic_prefix: TopicPrefixOpt = DEFAULT_TOPIC_PREFIX,
    serving: ServingOpt = DEFAULT_SERVING,
    hub: HubOpt = None,
    model_config_file: ModelConfigFileOpt = None,
) -> None:
    """Set the weights; running routers apply them within a second, without a restart.

    A variant that gets traffic must be a version label serving (--serving) resolves, else the weights
    are refused and the labels serving has are named: every image of an unknown variant would be a dead
    letter. Recorded as a serve job in the hub when one is configured (--hub) or exists at the default
    place; with --model-config-file the variant must also be one of the model's labels there.
    """
    from chexstack.ab import parse_weights, publish_weights
    from chexstack.topics import Topics

    try:
        parsed = parse_weights(weights or [])
    except ValueError as exc:  # before serving, the hub or Kafka is asked anything
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    hub_path = hub or default_hub()
    if hub is not None or hub_path.exists():
        from chexstack.commands.hub import service

        with service(
            hub_path,
            model_config_file=model_config_file,
            serving=serving,
            kafka=kafka,
            topic_prefix=topic_prefix,
        ) as svc:
            job = svc.set_ab(model_name, parsed)
        suffix = f" (hub job {job.id})"
    else:
        from chexstack.commands.hub import fail
        from chexstack.hub.service import ServiceError, check_weights

        try:
            check_weights(model_name, parsed, serving=serving, model_config_file=model_config_file)
        except ServiceError as exc:
            raise fail(exc) from exc
        publish_weights(kafka, Topics(topic_prefix).control, model_name, parsed)
        suffix = ""
    typer.echo(
        f"{model_name}: " + (", ".join(f"{k}={v}" for k, v in parsed.items()) or "latest version") + suffix
    )


@ab_app.command("show")
def show(
    model_name: Annotated[str, typer.Argument(help="Model name.")],
    kafka: KafkaOpt = DEFAULT_KAFKA,
    topic_prefix: TopicPrefixOpt = DEFAULT_TOPIC_PREFIX,
) -> None:
    """Print the current weights."""
    from chexstack.ab import read_weights
    from chexstack.topics import Topics

    cfg = read_weights(kafka, Topics(topic_prefix).control, model_name)
    typer.echo(
        f"{model_name}: "
        + (
            ", ".join(f"{k}={v}" for k, v in cfg.weights.items())
            if cfg and cfg.weights
            else "latest version (no weights set)"
        )
    )


def register(app: typer.Typer) -> None:
    app.add_typer(ab_app, name="ab")
