"""The upload path: validate, de-identify, store by content, publish an `Uploaded` reference.

Order matters for privacy: nothing is stored before it is validated and de-identified, and the raw
patient id never leaves this module (it is neither stored, published nor logged).
"""

from __future__ import annotations

import logging
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from confluent_kafka import KafkaException

from chexstack import deid, imageio
from chexstack.blobstore import BlobStore, open_store, sha256_hex
from chexstack.bus import PublishError, auth_hint, make_producer, produce_sync, reason
from chexstack.messages import Uploaded, now_ms
from chexstack.settings import Limits, configured_pseudonym_key
from chexstack.topics import Topics

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT_S = 30.0


class UploadUnavailable(RuntimeError):
    """Nothing can be uploaded now (the brokers, the store or the ingest service); str(exc) says which
    and what to check."""


class KafkaUnavailable(UploadUnavailable):
    """The brokers cannot be reached (or lack the topic); str(exc) names the bootstrap servers."""


class UnreadableFile(ValueError):
    """A file to upload is not a regular file, is over the size limit, or cannot be read; str(exc) says
    which (without the path: the caller knows it)."""


@dataclass(frozen=True)
class IngestResult:
    """The outcome for one file: an image_id, or the reason it was rejected.

    `transient`: the file is fine but the platform could not take it now (the store or Kafka failed);
    uploading it again later may succeed.
    """

    name: str
    image_id: str | None
    reason: str | None
    duplicate: bool = False
    transient: bool = False

    @property
    def ok(self) -> bool:
        return self.image_id is not None and self.reason is None


class UploadTarget(ABC):
    """Where files are uploaded to: `Uploader` (this process holds the key, the store and a Kafka
    producer) or `chexstack.ingest.client.IngestClient` (the ingest service holds them). The CLI and the
    notebooks work with either."""

    limits: Limits

    @abstractmethod
    def check_connection(self, timeout_s: float = 10.0) -> None:
        """Raise UploadUnavailable (naming what and where) unless an upload can go through now."""

    @abstractmethod
    def upload_bytes(self, data: bytes, name: str, patient_id: str | None = None) -> IngestResult:
        """Validate, de-identify, store and publish one image; a bad image is a result with its reason."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection; the target is not used afterwards."""

    def read_path(self, path: Path) -> bytes:
        """The bytes of a file to upload; its size is checked with stat before a byte is read.

        Raises UnreadableFile: not a regular file, over limits.max_bytes, or unreadable.
        """
        max_bytes = self.limits.max_bytes
        try:
            st = path.stat()
            if not path.is_file():
                raise UnreadableFile("not a file")
            if st.st_size > max_bytes:
                raise UnreadableFile(f"file is {st.st_size} bytes, over the limit of {max_bytes}")
            with path.open("rb") as f:
                # One byte past the limit: a file that grew since stat() is still caught (by decode).
                return f.read(max_bytes + 1)
        except FileNotFoundError:
            raise UnreadableFile("not a file") from None
        except OSError as exc:
            raise UnreadableFile(f"cannot read: {exc.strerror or exc}") from exc

    def upload_path(self, path: Path, patient_id: str | None = None) -> IngestResult:
        """Upload one file (read with `read_path`)."""
        name = str(path)
        try:
            data = self.read_path(path)
        except UnreadableFile as exc:
            return IngestResult(name, None, str(exc))
        return self.upload_bytes(data, name, patient_id)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Uploader(UploadTarget):
    """Uploads radiographs to one store and topic set; one Kafka producer for its lifetime."""

    def __init__(
        self,
        *,
        bootstrap: str,
        store: BlobStore,
        key: bytes,
        limits: Limits,
        topics: Topics = Topics(),
        publish_timeout_s: float = PUBLISH_TIMEOUT_S,
    ) -> None:
        if not key:
            raise ValueError("the pseudonym key must not be empty")
        self.bootstrap = bootstrap
        self.store = store
        self.limits = limits
        self.topics = topics
        self._key = key
        # Undelivered messages give up before produce_sync stops waiting, so a failure is reported
        # as the broker's error rather than left queued to be delivered behind the caller's back.
        self.publish_timeout_s = publish_timeout_s
        timeout_ms = max(1, int(publish_timeout_s * 800))
        self._producer: Any = make_producer(bootstrap, **{"message.timeout.ms": timeout_ms})

    def check_connection(self, timeout_s: float = 10.0) -> None:
        """Raise KafkaUnavailable unless the brokers answer and the uploaded topic exists."""
        try:
            meta = self._producer.list_topics(timeout=timeout_s)
        except Exception as exc:
            raise KafkaUnavailable(
                f"cannot reach Kafka at {self.bootstrap} within {timeout_s:.0f} s ({reason(exc)}); "
                "is the broker running (`chexstack kafka up`) and --kafka/CHEXSTACK_KAFKA right?"
                + auth_hint()
            ) from exc
        if self.topics.uploaded not in meta.topics:
            raise KafkaUnavailable(
                f"Kafka at {self.bootstrap} has no topic {self.topics.uploaded}; "
                "create it with `chexstack kafka topics` (and the same --topic-prefix)"
            )

    def upload_bytes(self, data: bytes, name: str, patient_id: str | None = None) -> IngestResult:
        """Validate, de-identify, store and publish one image; never raises for a bad image."""
        try:
            stored, fmt, patient = self._prepare(data, patient_id)
            # The stored bytes must still be a valid image: de-identification rewrote them.
            decoded = imageio.decode(stored, self.limits)
        except (imageio.InvalidImage, deid.DeidentificationError) as exc:
            return IngestResult(name, None, str(exc))
        sha = sha256_hex(stored)
        image_id = sha[:32]
        topic = self.topics.uploaded
        if self.store.is_published(sha, topic):
            return IngestResult(name, image_id, None, duplicate=True)
        try:
            uri = self.store.put(stored)
        except OSError as exc:
            return IngestResult(name, None, f"cannot store: {exc}", transient=True)
        msg = Uploaded(
            image_id=image_id,
            sha256=sha,
            blob_uri=uri,
            patient=patient,
            format=fmt,
            size_bytes=len(stored),
            width=decoded.width,
            height=decoded.height,
            uploaded_at_ms=now_ms(),
        )
        try:
            produce_sync(self._producer, topic, image_id, msg.to_bytes(), timeout_s=self.publish_timeout_s)
        except (PublishError, KafkaException, BufferError) as exc:
            # The blob stays but is not marked, so uploading the file again publishes it.
            log.warning("publishing %s failed: %s", image_id, exc)
            return IngestResult(name, None, f"publish failed: {exc}", transient=True)
        self.store.mark_published(sha, topic)
        log.info("uploaded %s (%s, %d bytes)", image_id, fmt, len(stored))
        return IngestResult(name, image_id, None)

    def _prepare(self, data: bytes, patient_id: str | None) -> tuple[bytes, imageio.ImageFormat, str | None]:
        """Validated, de-identified bytes to store, their format and the patient pseudonym."""
        fmt = imageio.decode(data, self.limits).format
        given = patient_id if patient_id is not None and patient_id.strip() else None
        if fmt == "dicom":
            ds = imageio.read_dicom(data)
            # pydicom's warnings and errors may quote element values, i.e. PHI: keep them out of logs.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                patient = deid.deidentify(ds, self._key, patient_id=given)
                try:
                    return deid.serialise(ds), fmt, patient
                except Exception as exc:  # pydicom refuses to write what it read: the file is at fault
                    raise imageio.InvalidImage(f"cannot re-encode dicom ({type(exc).__name__})") from None
        patient = deid.pseudonym(self._key, given) if given else None
        if fmt == "png":
            return deid.strip_png_metadata(data), fmt, patient
        return deid.strip_jpeg_metadata(data), fmt, patient

    def close(self) -> None:
        """Deliver anything still queued; the uploader is not used afterwards."""
        self._producer.flush(self.publish_timeout_s)


def open_uploader(
    kafka: str, store: str | None, pseudonym_key: str | None, limits: Limits, topics: Topics
) -> Uploader:
    """This process as the uploader (`chexstack upload`, `chexstack ingest serve`, a notebook outside the
    platform): the store, its pseudonym key (`pseudonym_key`, else CHEXSTACK_PSEUDONYM_KEY(_FILE), else
    the store's own) and a Kafka producer. Raises OSError or ValueError for a store or key that cannot be
    used."""
    blobs = open_store(store)
    key = deid.load_or_create_key(blobs, configured_pseudonym_key(pseudonym_key))
    return Uploader(bootstrap=kafka, store=blobs, key=key, limits=limits, topics=topics)
