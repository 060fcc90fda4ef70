"""`chexstack upload PATH...`: validate, de-identify, store and publish radiographs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from chexstack.settings import (
    DEFAULT_KAFKA,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    DEFAULT_TOPIC_PREFIX,
    KafkaOpt,
    Limits,
    MaxBytesOpt,
    MaxPixelsOpt,
    PseudonymKeyOpt,
    StoreOpt,
    TopicPrefixOpt,
    option,
    secret,
)
from chexstack.topics import Topics

if TYPE_CHECKING:
    from chexstack.ingest.uploader import UploadTarget


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


def _not_uploadable(path: Path) -> str | None:
    """Why a PATH argument cannot be uploaded at all, or None: it must be a file or a directory."""
    if not path.exists():  # also a link to nothing
        return "no such file"
    if not path.is_file() and not path.is_dir():
        return "not a regular file (nor a directory to walk)"
    return None


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
    ingest_url: Annotated[
        str | None,
        option(
            "--ingest-url",
            "Upload through the ingest service at this URL (it holds the pseudonym key and the store;"
            " CHEXSTACK_INGEST_TOKEN or CHEXSTACK_INGEST_TOKEN_FILE is its token). Unset: validate,"
            " de-identify, store and publish in this process (--kafka, --store, --pseudonym-key).",
            show_default=False,
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

    Exit status: 0 all uploaded, 1 some file rejected, 2 a PATH that is not there (nothing is uploaded),
    or Kafka, the store or the ingest service unusable.
    """
    from chexstack.ingest.uploader import UploadUnavailable, open_uploader

    # A mistyped argument is named before anything is contacted or uploaded.
    for path in paths:
        problem = _not_uploadable(path)
        if problem is not None:
            typer.echo(f"error: {path}: {problem}", err=True)
            raise typer.Exit(2)
    limits = Limits(max_bytes=max_bytes, max_pixels=max_pixels)
    try:
        target: UploadTarget = (
            _service(ingest_url, limits)
            if ingest_url
            else open_uploader(kafka, store, pseudonym_key, limits, Topics(topic_prefix))
        )
    except (OSError, ValueError) as exc:
        where = "ingest service" if ingest_url else "blob store"
        typer.echo(f"error: {where}: {exc}", err=True)
        raise typer.Exit(2) from exc
    rejected = 0
    try:
        target.check_connection()
        for path in _files(paths):
            result = target.upload_path(path, patient_id)
            if result.reason is not None:
                rejected += 1
                typer.echo(f"{result.name}\trejected: {result.reason}")
            elif result.duplicate:
                typer.echo(f"{result.name}\t{result.image_id}\t(already uploaded)")
            else:
                typer.echo(f"{result.name}\t{result.image_id}")
    except UploadUnavailable as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    finally:
        target.close()
    raise typer.Exit(1 if rejected else 0)


def _service(url: str, limits: Limits) -> UploadTarget:
    """The ingest service at `url`, with the token of CHEXSTACK_INGEST_TOKEN(_FILE)."""
    from chexstack.ingest.client import IngestClient

    return IngestClient(url, secret("CHEXSTACK_INGEST_TOKEN"), limits=limits)


def register(app: typer.Typer) -> None:
    app.command("upload")(upload)
