"""`chexstack predictions`: print predictions as a table or JSON lines."""

from __future__ import annotations

from typing import Annotated

import typer

from chexstack.settings import DEFAULT_KAFKA, DEFAULT_TOPIC_PREFIX, KafkaOpt, TopicPrefixOpt, option


def predictions(
    image_id: Annotated[
        list[str] | None, option("--image-id", "Only these images (repeatable); waits for each.", env=False)
    ] = None,
    follow: Annotated[
        bool, option("--follow", "Keep printing new predictions.", alias="-f", env=False)
    ] = False,
    timeout: Annotated[float | None, option("--timeout", "Stop after S seconds.", min=0)] = None,
    as_json: Annotated[bool, option("--json", "One JSON object per prediction per line.", env=False)] = False,
    threshold: Annotated[
        float, option("--threshold", "Findings shown at or above this.", min=0.0, max=1.0)
    ] = 0.5,
    kafka: KafkaOpt = DEFAULT_KAFKA,
    topic_prefix: TopicPrefixOpt = DEFAULT_TOPIC_PREFIX,
) -> None:
    """Print predictions from xray.predictions. Exit 1 if an --image-id got none before --timeout."""
    from rich.console import Console
    from rich.table import Table

    from chexstack.predictions import read_predictions
    from chexstack.topics import Topics

    wanted = image_id or []
    console = Console()
    seen: set[str] = set()
    table = None
    if not as_json and not follow:
        table = Table()
        table.add_column("image_id", no_wrap=True, min_width=32)
        for name in ("model", "variant", "top findings", "e2e ms"):
            table.add_column(name)
    for pred in read_predictions(
        kafka, Topics(topic_prefix).predictions, image_ids=wanted, follow=follow, timeout_s=timeout
    ):
        seen.add(pred.image_id)
        if as_json:
            typer.echo(pred.model_dump_json(by_alias=True))
            continue
        ranked = sorted(pred.by_label().items(), key=lambda kv: -kv[1])
        shown = [f"{k} {v:.2f}" for k, v in ranked if v >= threshold] or [f"none >= {threshold:.2f}"]
        row = (
            pred.image_id,
            f"{pred.model_name}:{pred.model_version}",
            pred.variant,
            ", ".join(shown[:4]),
            f"{pred.latency.end_to_end_ms:.0f}",
        )
        if table is not None:
            table.add_row(*row)
        else:
            typer.echo("\t".join(row))
    if table is not None:
        console.print(table)
    missing = set(wanted) - seen
    if missing:
        typer.echo(f"no prediction yet for: {', '.join(sorted(missing))}", err=True)
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("predictions")(predictions)
