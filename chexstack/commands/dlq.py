"""`chexstack dlq list|show|replay`: the dead letters of xray.dlq, and a second try for them."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer

from chexstack.settings import (
    DEFAULT_KAFKA,
    DEFAULT_MODEL_NAME,
    DEFAULT_TOPIC_PREFIX,
    HubOpt,
    JsonOpt,
    KafkaOpt,
    ModelNameOpt,
    TopicPrefixOpt,
    default_hub,
    option,
)
from chexstack.topics import Topics

if TYPE_CHECKING:
    from chexstack.dlq import Letter

dlq_app = typer.Typer(
    help="Dead letters (xray.dlq): what could not be processed and why; replay once the cause is fixed.",
    no_args_is_help=True,
)

ImageIdsOpt = Annotated[
    list[str] | None, option("--image-id", "Only the dead letters of these images (repeatable).", env=False)
]
ReasonOpt = Annotated[
    str | None, option("--reason", "Only dead letters whose reason contains TEXT (any case).", env=False)
]
# How long a command reads xray.dlq (and xray.predictions) to their ends.
READ_TIMEOUT_S = 30.0


def _read(kafka: str, topics: Topics) -> list[Letter]:
    from chexstack.dlq import read_letters

    result = read_letters(kafka, topics.dlq, timeout_s=READ_TIMEOUT_S)
    if result.undecodable:
        typer.echo(f"({result.undecodable} records in {topics.dlq} are not dead letters: left out)", err=True)
    if not result.complete:
        typer.echo(f"(read stopped after {READ_TIMEOUT_S:g} s before the end of {topics.dlq})", err=True)
    return result.letters


@dlq_app.command("list")
def list_letters(
    image_id: ImageIdsOpt = None,
    reason: ReasonOpt = None,
    as_json: JsonOpt = False,
    kafka: KafkaOpt = DEFAULT_KAFKA,
    topic_prefix: TopicPrefixOpt = DEFAULT_TOPIC_PREFIX,
) -> None:
    """Dead letters, oldest first: where in xray.dlq, when, which worker, from which topic, image id, why."""
    from rich.console import Console
    from rich.table import Table

    from chexstack.dlq import select
    from chexstack.messages import format_ms

    letters = select(_read(kafka, Topics(topic_prefix)), image_ids=image_id or [], reason=reason)
    letters.sort(key=lambda lt: (lt.letter.failed_at_ms, lt.where))
    if as_json:
        for lt in letters:
            doc = lt.letter.model_dump(by_alias=True, exclude={"payload_b64"})
            typer.echo(json.dumps({"dlq": lt.where, **doc}))
        return
    table = Table(title=f"{len(letters)} dead letter(s)")
    for name in ("dlq", "failed at", "worker", "from", "image id", "reason"):
        table.add_column(name, no_wrap=name != "reason")
    for lt in letters:
        d = lt.letter
        table.add_row(
            lt.where, format_ms(d.failed_at_ms), d.worker, d.source_topic, d.key or "-", d.reason[:200]
        )
    Console().print(table)


@dlq_app.command("show")
def show(
    image: Annotated[str, typer.Argument(help="The image id (the dead letter's key).")],
    kafka: KafkaOpt = DEFAULT_KAFKA,
    topic_prefix: TopicPrefixOpt = DEFAULT_TOPIC_PREFIX,
) -> None:
    """Every dead letter of one image in full. Exit 1 when it has none."""
    from chexstack.dlq import select
    from chexstack.messages import format_ms

    topics = Topics(topic_prefix)
    letters = select(_read(kafka, topics), image_ids=[image])
    if not letters:
        typer.echo(f"no dead letter for {image} in {topics.dlq}", err=True)
        raise typer.Exit(1)
    for lt in letters:
        d = lt.letter
        kept = len(lt.payload)
        typer.echo(
            f"{d.key}  ({topics.dlq} {lt.where})\n"
            f"  failed at:  {format_ms(d.failed_at_ms)}, in {d.worker} ({d.error_type})\n"
            f"  from:       {d.source_topic} partition {d.source_partition} offset {d.source_offset}\n"
            f"  original:   {d.payload_bytes if d.payload_bytes is not None else kept} bytes, {kept} kept\n"
            f"  reason:     {d.reason}"
        )


@dlq_app.command("replay")
def replay_letters(
    image_id: ImageIdsOpt = None,
    reason: ReasonOpt = None,
    every: Annotated[
        bool, option("--all", "Every dead letter (neither --image-id nor --reason needed).", env=False)
    ] = False,
    kafka: KafkaOpt = DEFAULT_KAFKA,
    topic_prefix: TopicPrefixOpt = DEFAULT_TOPIC_PREFIX,
    hub: HubOpt = None,
    model_name: ModelNameOpt = DEFAULT_MODEL_NAME,
) -> None:
    """Publish the originals of dead letters again to their source topics, once the cause is fixed.

    Of an image's letters only the newest is replayed (where it failed last), and an image predicted
    after its letter is left alone, so one replay gives each image one more try, no more. One line per
    image: `<image id>TAB<source topic>TABreplayed`, `predicted since: nothing to do`, or `skipped: why`
    (a cut or empty original). Recorded as a serve job in the hub when one is configured (--hub) or
    exists at the default place.

    Exit status: 0 every chosen letter replayed (or nothing to do), 1 some could not be or Kafka refused
    the replay, 2 no selection.
    """
    from chexstack.bus import PublishError
    from chexstack.dlq import newest_per_image, plan_replay, predicted_since, replay, select, worker_inputs

    if not (image_id or reason or every):
        raise typer.BadParameter("choose the dead letters: --image-id ID, --reason TEXT or --all")
    topics = Topics(topic_prefix)
    chosen = newest_per_image(select(_read(kafka, topics), image_ids=image_id or [], reason=reason))
    plan = plan_replay(
        chosen,
        worker_inputs(topics),
        predicted_since(kafka, topics.predictions, chosen, timeout_s=READ_TIMEOUT_S),
    )
    hub_path = hub or default_hub()
    suffix = ""
    if plan.replay and (hub is not None or hub_path.exists()):
        from chexstack.commands.hub import service

        selection = {"image_ids": image_id or [], "reason": reason, "all": every}
        with service(hub_path, kafka=kafka, topic_prefix=topic_prefix) as svc:
            job = svc.replay_dead_letters(model_name, plan, selection)
        suffix = f" (hub job {job.id})"
    else:
        try:
            replay(kafka, plan.replay)
        except PublishError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc
    for lt in plan.replay:
        typer.echo(f"{lt.letter.key or lt.where}\t{lt.letter.source_topic}\treplayed{suffix}")
    for lt in plan.done:
        typer.echo(f"{lt.letter.key}\t{lt.letter.source_topic}\tpredicted since: nothing to do")
    for lt, why in plan.skipped:
        typer.echo(f"{lt.letter.key or lt.where}\t{lt.letter.source_topic}\tskipped: {why}")
    if not chosen:
        typer.echo(f"no dead letter in {topics.dlq} matches", err=True)
    raise typer.Exit(1 if plan.skipped else 0)


def register(app: typer.Typer) -> None:
    app.add_typer(dlq_app, name="dlq")
