"""`chexstack ab set|show`: A/B weights on the compacted control topic (routers follow live)."""

from __future__ import annotations

from pathlib import Path

import typer

from chexstack.settings import HubOpt, KafkaOpt, ModelConfigFileOpt, TopicPrefixOpt, default_hub

ab_app = typer.Typer(
    help="A/B weights between model variants (TF Serving version labels).", no_args_is_help=True
)


@ab_app.command("set")
def set_weights(
    model_name: str = typer.Argument(..., help="Model name, e.g. chexnet."),
    weights: list[str] = typer.Argument(
        None, help="NAME=WEIGHT ..., e.g. stable=90 canary=10; none = latest."
    ),
    kafka: str = KafkaOpt,  # type: ignore[assignment]
    topic_prefix: str = TopicPrefixOpt,  # type: ignore[assignment]
    hub: Path | None = HubOpt,  # type: ignore[assignment]
    model_config_file: Path | None = ModelConfigFileOpt,  # type: ignore[assignment]
) -> None:
    """Set the weights; running routers apply them within a second, without a restart.

    Recorded as a serve job in the hub when one is configured (--hub) or exists at the default place;
    with --model-config-file, a variant that gets traffic must be one of the model's version labels.
    """
    from chexstack.ab import parse_weights, publish_weights
    from chexstack.topics import Topics

    try:
        parsed = parse_weights(weights or [])
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="WEIGHTS") from exc
    hub_path = hub or default_hub()
    if hub is not None or hub_path.exists():
        from chexstack.commands.hub import service

        with service(
            hub_path, model_config_file=model_config_file, kafka=kafka, topic_prefix=topic_prefix
        ) as svc:
            job = svc.set_ab(model_name, parsed)
        suffix = f" (hub job {job.id})"
    else:
        if model_config_file is not None:
            from chexstack.commands.hub import fail
            from chexstack.hub.service import ServiceError, check_variants

            try:
                check_variants(model_config_file, model_name, parsed)
            except ServiceError as exc:
                raise fail(exc) from exc
        publish_weights(kafka, Topics(topic_prefix).control, model_name, parsed)
        suffix = ""
    typer.echo(
        f"{model_name}: " + (", ".join(f"{k}={v}" for k, v in parsed.items()) or "latest version") + suffix
    )


@ab_app.command("show")
def show(
    model_name: str = typer.Argument(..., help="Model name."),
    kafka: str = KafkaOpt,  # type: ignore[assignment]
    topic_prefix: str = TopicPrefixOpt,  # type: ignore[assignment]
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
