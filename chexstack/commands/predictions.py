"""`chexstack predictions`: print predictions as a table or JSON lines."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Annotated

import typer

from chexstack.settings import DEFAULT_KAFKA, DEFAULT_TOPIC_PREFIX, KafkaOpt, TopicPrefixOpt, option

# `--follow` prints rows as they come, so its table cannot be sized to its rows: fixed widths (0: the rest
# of the line), a longer value cut with "…".
FOLLOW_COLUMNS = (
    ("time (UTC)", 19),
    ("image id", 32),
    ("model:version", 16),
    ("variant", 8),
    ("top findings, or why it is a dead letter", 0),
)


def follow_line(cells: Sequence[str]) -> str:
    """One row (or the header) of the --follow table."""
    out = []
    for (_, width), cell in zip(FOLLOW_COLUMNS, cells, strict=True):
        cell = " ".join(cell.split())  # a reason with newlines stays on its row
        if width:
            cell = (cell if len(cell) <= width else cell[: width - 1] + "…").ljust(width)
        out.append(cell)
    return "  ".join(out).rstrip()


def predictions(
    image_id: Annotated[
        list[str] | None, option("--image-id", "Only these images (repeatable); waits for each.", env=False)
    ] = None,
    follow: Annotated[
        bool,
        option(
            "--follow",
            "Keep printing new predictions, and dead letters with their reason.",
            alias="-f",
            env=False,
        ),
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
    from chexstack.predictions import await_outcomes, follow_outcomes, read_predictions
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
    outcomes: Iterable[Prediction | DeadLetter]
    if wanted:
        outcomes = await_outcomes(kafka, topics, wanted, timeout_s=timeout)
    elif follow and not as_json:
        outcomes = follow_outcomes(kafka, topics, timeout_s=timeout)
    else:
        outcomes = read_predictions(kafka, topics.predictions, follow=follow, timeout_s=timeout)
    streaming = follow and not as_json
    if streaming:
        typer.echo(follow_line([name for name, _ in FOLLOW_COLUMNS]))
    dead: list[DeadLetter] = []
    for pred in outcomes:
        if isinstance(pred, DeadLetter):
            if streaming and not wanted:
                when = format_ms(pred.failed_at_ms).removesuffix(" UTC")
                why = f"dead letter ({pred.worker}, from {pred.source_topic}): {pred.reason}"
                typer.echo(follow_line([when, pred.key or "-", "-", "-", why]))
            else:
                dead.append(pred)
            continue
        seen.add(pred.image_id)
        if as_json:
            typer.echo(pred.model_dump_json(by_alias=True))
            continue
        ranked = sorted(pred.by_label().items(), key=lambda kv: -kv[1])
        shown = [f"{k} {v:.2f}" for k, v in ranked if v >= threshold] or [f"none >= {threshold:.2f}"]
        findings = ", ".join(shown[:4])
        model = f"{pred.model_name}:{pred.model_version}"
        if table is not None:
            table.add_row(pred.image_id, model, pred.variant, findings, f"{pred.latency.end_to_end_ms:.0f}")
        else:
            when = format_ms(pred.predicted_at_ms).removesuffix(" UTC")
            typer.echo(follow_line([when, pred.image_id, model, pred.variant, findings]))
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
