"""`chexstack predictions`: print predictions as a table or JSON lines."""

from __future__ import annotations

import typer

from chexstack.settings import KafkaOpt, TopicPrefixOpt


def predictions(
    image_id: list[str] = typer.Option(
        [], "--image-id", help="Only these images (repeatable); waits for each."
    ),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new predictions."),
    timeout: float | None = typer.Option(None, "--timeout", min=0, help="Stop after S seconds."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per prediction per line."),
    threshold: float = typer.Option(
        0.5, "--threshold", min=0.0, max=1.0, help="Findings shown at or above this."
    ),
    kafka: str = KafkaOpt,  # type: ignore[assignment]
    topic_prefix: str = TopicPrefixOpt,  # type: ignore[assignment]
) -> None:
    """Print predictions from xray.predictions. Exit 1 if an --image-id got none before --timeout."""
    from rich.console import Console
    from rich.table import Table

    from chexstack.predictions import read_predictions
    from chexstack.topics import Topics

    console = Console()
    seen: set[str] = set()
    table = None
    if not as_json and not follow:
        table = Table()
        table.add_column("image_id", no_wrap=True, min_width=32)
        for name in ("model", "variant", "top findings", "e2e ms"):
            table.add_column(name)
    for pred in read_predictions(
        kafka, Topics(topic_prefix).predictions, image_ids=image_id, follow=follow, timeout_s=timeout
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
    missing = set(image_id) - seen
    if missing:
        typer.echo(f"no prediction yet for: {', '.join(sorted(missing))}", err=True)
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("predictions")(predictions)
