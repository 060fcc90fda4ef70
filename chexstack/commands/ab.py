"""`chexstack ab set|show`: A/B weights on the compacted control topic (routers follow live)."""

from __future__ import annotations

import typer

from chexstack.settings import KafkaOpt, TopicPrefixOpt

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
) -> None:
    """Set the weights; running routers apply them within a second, without a restart."""
    from chexstack.ab import parse_weights, publish_weights
    from chexstack.topics import Topics

    try:
        parsed = parse_weights(weights or [])
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="WEIGHTS") from exc
    cfg = publish_weights(kafka, Topics(topic_prefix).control, model_name, parsed)
    typer.echo(
        f"{model_name}: " + (", ".join(f"{k}={v}" for k, v in cfg.weights.items()) or "latest version")
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
