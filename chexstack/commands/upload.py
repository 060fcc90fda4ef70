"""`chexstack upload PATH...`: validate, de-identify, store and publish radiographs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from chexstack.settings import (
    DEFAULT_KAFKA,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    DEFAULT_TOPIC_PREFIX,
    KafkaOpt,
    MaxBytesOpt,
    MaxPixelsOpt,
    PseudonymKeyOpt,
    StoreOpt,
    TopicPrefixOpt,
    option,
)


def _files(paths: list[Path]) -> Iterator[Path]:
    """Each argument, with directories walked recursively in sorted order (hidden entries skipped)."""
    for path in paths:
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                rel = child.relative_to(path).parts
                if child.is_file() and not any(p.startswith(".") for p in rel):
                    yield child
        else:
            yield path


def upload(
    paths: Annotated[
        list[Path], typer.Argument(help="Files or directories (walked recursively).", show_default=False)
    ],
    patient_id: Annotated[
        str | None,
        option(
            "--patient-id",
            "Patient ID for every file (pseudonymised; overrides the DICOM PatientID).",
            env=False,
        ),
    ] = None,
    kafka: KafkaOpt = DEFAULT_KAFKA,
    store: StoreOpt = None,
    pseudonym_key: PseudonymKeyOpt = None,
    max_bytes: MaxBytesOpt = DEFAULT_MAX_BYTES,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
    topic_prefix: TopicPrefixOpt = DEFAULT_TOPIC_PREFIX,
) -> None:
    """Upload radiographs (PNG, JPEG, DICOM CR/DX): one line per file, `<name>TAB<image_id>` or the reason.

    Exit status: 0 all uploaded, 1 some file rejected, 2 Kafka or the store unusable.
    """
    from chexstack.blobstore import open_store
    from chexstack.deid import load_or_create_key
    from chexstack.ingest import KafkaUnavailable, Uploader
    from chexstack.settings import Limits
    from chexstack.topics import Topics

    try:
        blobs = open_store(store)
        key = load_or_create_key(blobs, pseudonym_key)
    except (OSError, ValueError) as exc:
        typer.echo(f"error: blob store: {exc}", err=True)
        raise typer.Exit(2) from exc
    uploader = Uploader(
        bootstrap=kafka,
        store=blobs,
        key=key,
        limits=Limits(max_bytes=max_bytes, max_pixels=max_pixels),
        topics=Topics(topic_prefix),
    )
    rejected = 0
    try:
        uploader.check_connection()
        for path in _files(paths):
            result = uploader.upload_path(path, patient_id)
            if result.reason is not None:
                rejected += 1
                typer.echo(f"{result.name}\trejected: {result.reason}")
            elif result.duplicate:
                typer.echo(f"{result.name}\t{result.image_id}\t(already uploaded)")
            else:
                typer.echo(f"{result.name}\t{result.image_id}")
    except KafkaUnavailable as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    finally:
        uploader.close()
    raise typer.Exit(1 if rejected else 0)


def register(app: typer.Typer) -> None:
    app.command("upload")(upload)
