"""`chexstack predictions`: print predictions as a table or JSON lines."""

from __future__ import annotations

from collections.abc import Iterable
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
    """Print predictions from xray.predictions. With --image-id, an image in xray.dlq is named with the
    reason instead of waited for. Exit 1 if an --image-id got no prediction (dead letter or --timeout)."""
    from rich.console import Console
    from rich.table import Table

    from chexstack.messages import DeadLetter, Prediction, format_ms
    from chexstack.predictions import await_outcomes, read_predictions
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
    topics = Topics(topic_prefix)
    outcomes: Iterable[Prediction | DeadLetter] = (
        await_outcomes(kafka, topics, wanted, timeout_s=timeout)
        if wanted
        else read_predictions(kafka, topics.predictions, follow=follow, timeout_s=timeout)
    )
    dead: list[DeadLetter] = []
    for pred in outcomes:
        if isinstance(pred, DeadLetter):
            dead.append(pred)
            continue
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
    for letter in dead:
        typer.echo(
            f"{letter.key}: no prediction: in {topics.dlq} since {format_ms(letter.failed_at_ms)} "
            f"({letter.worker}, from {letter.source_topic}): {letter.reason}",
            err=True,
        )
    missing = set(wanted) - seen - {letter.key for letter in dead}
    if missing:
        typer.echo(f"no prediction yet for: {', '.join(sorted(missing))}", err=True)
    if missing or dead:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("predictions")(predictions)
