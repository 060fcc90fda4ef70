"""The upload path against the real broker: publish once, dedupe, reject bad input, never leak PHI."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from PIL import Image
from pydicom.dataset import Dataset

from chexstack import messages, synth
from chexstack.blobstore import BlobStore, parse_uri, sha256_hex
from chexstack.deid import pseudonym
from chexstack.ingest.uploader import IngestResult, KafkaUnavailable, Uploader
from chexstack.settings import Limits
from chexstack.topics import Topics

from ..conftest import LIMITS, free_port

pytestmark = pytest.mark.integration

KEY = b"integration-test-key"
UPLOADED = "xray.uploaded"
_TRANSIENT = (
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
)


def _watermarks(consumer: Consumer, tp: TopicPartition) -> tuple[int, int]:
    """A just-created topic may not have elected its leaders yet: retry those transient errors."""
    for _ in range(60):
        try:
            low, high = consumer.get_watermark_offsets(tp, timeout=30)
            return int(low), int(high)
        except KafkaException as exc:
            if exc.args[0].code() not in _TRANSIENT:
                raise
            time.sleep(0.5)
    raise AssertionError(f"no leader for {tp.topic}[{tp.partition}]")


def read_topic(bootstrap: str, topic: str) -> list[tuple[bytes | None, bytes | None]]:
    """Every message in the topic, read from each partition's start up to its current end."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"test-{uuid.uuid4().hex}"})
    try:
        parts = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        out: list[tuple[bytes | None, bytes | None]] = []
        for p in sorted(parts):
            low, high = _watermarks(consumer, TopicPartition(topic, p))
            if high <= low:
                continue
            consumer.assign([TopicPartition(topic, p, low)])
            got = 0
            for _ in range(300):  # bounded so a broken broker fails the test instead of hanging it
                msg = consumer.poll(0.5)
                if msg is None:
                    continue
                assert msg.error() is None, msg.error()
                out.append((msg.key(), msg.value()))
                got += 1
                if msg.offset() >= high - 1:
                    break
            assert got == high - low, f"read {got} of {high - low} messages from {topic}[{p}]"
        return out
    finally:
        consumer.close()


def uploaded(kafka: str, topics: dict[str, str]) -> list[messages.Uploaded]:
    msgs = []
    for key, value in read_topic(kafka, topics[UPLOADED]):
        msg = messages.decode(messages.Uploaded, value)
        assert key == msg.image_id.encode()
        msgs.append(msg)
    return msgs


def stored_files(store_dir: Path) -> list[Path]:
    return sorted(p for p in store_dir.rglob("*") if p.is_file())


def blobs(store_dir: Path) -> list[Path]:
    return sorted(p for p in (store_dir / "sha256").rglob("*") if p.is_file()) if store_dir.exists() else []


@pytest.fixture
def uploader(kafka: str, topics: dict[str, str], store_dir: Path) -> Iterator[Uploader]:
    up = Uploader(
        bootstrap=kafka, store=BlobStore(store_dir), key=KEY, limits=LIMITS, topics=Topics(topics["prefix"])
    )
    yield up
    up.close()


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    return synth.render_radiograph(np.random.default_rng(7), [], size=96)


def test_valid_uploads_publish_one_message_each(
    uploader: Uploader, kafka: str, topics: dict[str, str], store_dir: Path, pixels: np.ndarray
) -> None:
    png = synth.make_png(pixels)
    jpeg = synth.make_jpeg(pixels[:, :64], exif_orientation=6)
    dicom = synth.make_dicom(pixels, patient_id="SYN-0042")
    results = [
        uploader.upload_bytes(png, "a.png", patient_id="PID-7"),
        uploader.upload_bytes(jpeg, "b.jpg"),
        uploader.upload_bytes(dicom, "c.dcm"),
    ]
    assert all(r.reason is None and r.image_id and not r.duplicate for r in results), results
    msgs = {m.image_id: m for m in uploaded(kafka, topics)}
    assert sorted(msgs) == sorted(r.image_id for r in results if r.image_id)
    store = BlobStore(store_dir)
    for r, fmt in zip(results, ("png", "jpeg", "dicom"), strict=True):
        msg = msgs[r.image_id or ""]
        data = store.get(msg.blob_uri)
        assert msg.format == fmt and msg.sha256 == sha256_hex(data) and msg.image_id == msg.sha256[:32]
        assert msg.size_bytes == len(data)
        assert store.is_published(msg.sha256, topics[UPLOADED])
    png_msg, jpeg_msg, dicom_msg = (msgs[r.image_id or ""] for r in results)
    assert png_msg.patient == pseudonym(KEY, "PID-7") and (png_msg.width, png_msg.height) == (96, 96)
    assert jpeg_msg.patient is None and (jpeg_msg.width, jpeg_msg.height) == (96, 64)  # EXIF rotation
    assert Image.open(io.BytesIO(store.get(jpeg_msg.blob_uri))).getexif().get(0x0112) == 6
    assert dicom_msg.patient == pseudonym(KEY, "SYN-0042")
    ds = pydicom.dcmread(io.BytesIO(store.get(dicom_msg.blob_uri)))
    assert ds.PatientIdentityRemoved == "YES" and ds.PatientID == dicom_msg.patient
    assert png == store.get(png_msg.blob_uri)  # nothing to strip: stored byte for byte


def test_same_bytes_twice_gives_one_message(
    uploader: Uploader, kafka: str, topics: dict[str, str], store_dir: Path, pixels: np.ndarray
) -> None:
    dicom = synth.make_dicom(pixels)
    first = uploader.upload_bytes(dicom, "x.dcm")
    second = uploader.upload_bytes(dicom, "y.dcm")
    again = Uploader(
        bootstrap=kafka, store=BlobStore(store_dir), key=KEY, limits=LIMITS, topics=Topics(topics["prefix"])
    )
    try:
        third = again.upload_bytes(dicom, "z.dcm")
    finally:
        again.close()
    assert first.image_id and not first.duplicate
    assert second == IngestResult("y.dcm", first.image_id, None, duplicate=True)
    assert third.duplicate and third.image_id == first.image_id
    assert [m.image_id for m in uploaded(kafka, topics)] == [first.image_id]
    assert len(blobs(store_dir)) == 1


def _bad_inputs(pixels: np.ndarray) -> dict[str, tuple[bytes, Limits, str]]:
    png = synth.make_png(pixels)
    burned = synth.make_dicom(pixels, extra=lambda ds: setattr(ds, "BurnedInAnnotation", "YES"))
    return {
        "zero-bytes.png": (b"", LIMITS, "empty"),
        "truncated.png": (png[: len(png) // 2], LIMITS, "truncated"),
        "text.png": (b"patient: DOE^JANE\nnot an image\n", LIMITS, "text"),
        "image.gif": (b"GIF89a" + b"\x00" * 64, LIMITS, "GIF"),
        "big.png": (png, replace(LIMITS, max_bytes=len(png) - 1), "over the limit"),
        "wide.png": (png, replace(LIMITS, max_pixels=96 * 96 - 1), "pixels"),
        "nopixels.dcm": (synth.make_dicom(pixels, with_pixels=False), LIMITS, "no pixel data"),
        "ct.dcm": (synth.make_dicom(pixels, modality="CT"), LIMITS, "modality CT"),
        "burned.dcm": (burned, LIMITS, "BurnedInAnnotation"),
    }


@pytest.mark.parametrize(
    "name",
    ["zero-bytes.png", "truncated.png", "text.png", "image.gif", "big.png", "wide.png", "nopixels.dcm",
     "ct.dcm", "burned.dcm"],
)  # fmt: skip
def test_bad_input_is_rejected_with_nothing_stored_or_published(
    name: str, kafka: str, topics: dict[str, str], tmp_path: Path, store_dir: Path, pixels: np.ndarray
) -> None:
    data, limits, reason = _bad_inputs(pixels)[name]
    path = tmp_path / name
    path.write_bytes(data)
    up = Uploader(
        bootstrap=kafka, store=BlobStore(store_dir), key=KEY, limits=limits, topics=Topics(topics["prefix"])
    )
    try:
        by_bytes = up.upload_bytes(data, name)
        by_path = up.upload_path(path)
    finally:
        up.close()
    for r in (by_bytes, by_path):
        assert r.image_id is None and r.reason and reason.lower() in r.reason.lower(), r
    assert blobs(store_dir) == []
    assert read_topic(kafka, topics[UPLOADED]) == []


def test_paths_that_are_not_files(uploader: Uploader, tmp_path: Path, store_dir: Path) -> None:
    assert uploader.upload_path(tmp_path).reason == "not a file"
    assert uploader.upload_path(tmp_path / "missing.png").reason == "not a file"
    assert blobs(store_dir) == []


# Uploader.upload_path on one file in a fresh interpreter; prints the IngestResult as JSON.
_UPLOAD_PATH = """
import dataclasses, json, sys
from pathlib import Path
from chexstack.blobstore import BlobStore
from chexstack.ingest.uploader import Uploader
from chexstack.settings import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, Limits
from chexstack.topics import Topics
bootstrap, store, prefix, path = sys.argv[1:]
limits = Limits(max_bytes=DEFAULT_MAX_BYTES, max_pixels=DEFAULT_MAX_PIXELS)
store = BlobStore(Path(store))
up = Uploader(bootstrap=bootstrap, store=store, key=b"k", limits=limits, topics=Topics(prefix))
try:
    print(json.dumps(dataclasses.asdict(up.upload_path(Path(path)))))
finally:
    up.close()
"""


def test_unreadable_file_is_rejected_for_root_too(
    kafka: str, topics: dict[str, str], store_dir: Path, tmp_path: Path, pixels: np.ndarray
) -> None:
    locked = tmp_path / "locked.png"
    locked.write_bytes(synth.make_png(pixels))
    locked.chmod(0)
    args = [sys.executable, "-c", _UPLOAD_PATH, kafka, str(store_dir), topics["prefix"], str(locked)]
    if os.geteuid() == 0:
        # Root reads a mode-0 file only through CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH, and CI runs as
        # root: drop both from the bounding set (it applies from the next exec, hence the child), so
        # the kernel refuses the open on the mode bits as it does for any other user. Not a switch
        # to uid 65534: the interpreter may live where only root can enter (/root/.pyenv).
        args = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *args]
    child = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr
    assert json.loads(child.stdout) == {
        "name": str(locked),
        "image_id": None,
        "reason": "cannot read: Permission denied",
        "duplicate": False,
        "transient": False,
    }
    assert blobs(store_dir) == []
    assert read_topic(kafka, topics[UPLOADED]) == []


def _phi_dicom(pixels: np.ndarray) -> bytes:
    def add_phi(ds: Dataset) -> None:
        ds.PatientName = "DOE^JANE"
        ds.PatientID = "MRN-12345"
        ds.PatientBirthDate = "19610203"
        ds.InstitutionName = "St Jane Doe Memorial"
        ds.ReferringPhysicianName = "DOE^JOHN"
        ds.OtherPatientIDs = "MRN-12345"
        ds.add_new(0x00290010, "LO", "ACME PRIVATE")
        ds.add_new(0x00291001, "LO", "DOE^JANE MRN-12345")
        ref = Dataset()
        ref.PatientName = "DOE^JANE"
        ref.PatientID = "MRN-12345"
        ds.ReferencedPatientSequence = [ref]
        req = Dataset()
        req.RequestedProcedureID = "MRN-12345"
        req.ScheduledProcedureStepDescription = "Chest for DOE^JANE"
        ds.RequestAttributesSequence = [req]
        other = Dataset()
        other.PatientID = "MRN-12345"
        other.IssuerOfPatientID = "JANE HOSPITAL"
        ds.OtherPatientIDsSequence = [other]
        kept = Dataset()
        kept.CodeMeaning = "chest of DOE JANE"
        ds.AnatomicRegionSequence = [kept]

    return synth.make_dicom(pixels, patient_name="DOE^JANE", patient_id="MRN-12345", extra=add_phi)


def _phi_jpeg(pixels: np.ndarray) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 1
    exif[0x010E] = "DOE^JANE"  # ImageDescription
    exif[0x013B] = "MRN-12345"  # Artist
    exif[0x9286] = "DOE^JANE"  # UserComment (in IFD0 here; still must go)
    buf = io.BytesIO()
    img = Image.fromarray((pixels * 255).astype(np.uint8))
    img.save(buf, format="JPEG", exif=exif.tobytes(), comment=b"DOE^JANE MRN-12345")
    return buf.getvalue()


def _phi_png(pixels: np.ndarray) -> bytes:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "DOE^JANE MRN-12345")
    info.add_itxt("Author", "JANE DOE", zip=True)
    buf = io.BytesIO()
    Image.fromarray((pixels * 255).astype(np.uint8)).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def test_phi_is_never_stored_or_published(
    uploader: Uploader,
    kafka: str,
    topics: dict[str, str],
    store_dir: Path,
    tmp_path: Path,
    pixels: np.ndarray,
) -> None:
    dicom, jpeg, png = _phi_dicom(pixels), _phi_jpeg(pixels), _phi_png(pixels)
    for data in (dicom, jpeg, png):  # the inputs do carry PHI, so the scan below is meaningful
        assert b"DOE" in data and b"JANE" in data
    assert b"MRN-12345" in dicom and b"MRN-12345" in jpeg
    (tmp_path / "DOE_JANE").mkdir()
    (tmp_path / "DOE_JANE" / "scan.dcm").write_bytes(dicom)
    results = [
        uploader.upload_path(tmp_path / "DOE_JANE" / "scan.dcm"),
        uploader.upload_bytes(jpeg, "photo.jpg"),
        uploader.upload_bytes(png, "photo.png", patient_id="MRN-12345"),
    ]
    assert all(r.image_id and r.reason is None for r in results), results
    msgs = {m.image_id: m for m in uploaded(kafka, topics)}
    dicom_msg, jpeg_msg, png_msg = (msgs[r.image_id or ""] for r in results)
    assert len(msgs) == 3 and jpeg_msg.patient is None
    assert dicom_msg.patient == png_msg.patient == pseudonym(KEY, "MRN-12345")  # same patient, same pseudonym

    files = stored_files(store_dir)
    assert len(blobs(store_dir)) == 3
    for path in files:
        data = path.read_bytes()
        for needle in (b"DOE", b"JANE", b"MRN-12345", b"19610203"):
            assert needle not in data and needle not in path.name.encode(), (path, needle)
    for name, topic in topics.items():
        if name == "prefix":
            continue
        for key, value in read_topic(kafka, topic):
            for part in (key or b"", value or b""):
                for needle in (b"DOE", b"JANE", b"MRN-12345"):
                    assert needle not in part, (topic, needle)


def test_failed_publish_keeps_the_blob_unmarked_and_a_retry_publishes(
    kafka: str, topics: dict[str, str], store_dir: Path, pixels: np.ndarray
) -> None:
    png = synth.make_png(pixels)
    store = BlobStore(store_dir)
    dead = Uploader(
        bootstrap=f"127.0.0.1:{free_port()}",
        store=store,
        key=KEY,
        limits=LIMITS,
        topics=Topics(topics["prefix"]),
        publish_timeout_s=3,
    )
    try:
        with pytest.raises(KafkaUnavailable, match=r"127\.0\.0\.1"):
            dead.check_connection(timeout_s=2)
        failed = dead.upload_bytes(png, "a.png")
    finally:
        dead.close()
    assert failed.image_id is None and failed.reason and failed.reason.startswith("publish failed")
    assert failed.transient  # the file is fine: the same upload may succeed later
    sha = sha256_hex(png)
    assert store.exists(sha) and not store.is_published(sha, topics[UPLOADED])

    live = Uploader(bootstrap=kafka, store=store, key=KEY, limits=LIMITS, topics=Topics(topics["prefix"]))
    try:
        live.check_connection()
        retry = live.upload_bytes(png, "a.png")
    finally:
        live.close()
    assert retry.image_id == sha[:32] and not retry.duplicate
    assert [m.image_id for m in uploaded(kafka, topics)] == [sha[:32]]


# --- the CLI ----------------------------------------------------------------------------------------


def _cli() -> list[str]:
    exe = Path(sys.executable).with_name("chexstack")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "chexstack"]


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*_cli(), "upload", *args], env=env, capture_output=True, text=True, timeout=300)


def _env(kafka: str, prefix: str, store_dir: Path, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHEXSTACK_")}
    env |= {
        "CHEXSTACK_KAFKA": kafka,
        "CHEXSTACK_STORE": str(store_dir),
        "CHEXSTACK_TOPIC_PREFIX": prefix,
        "CHEXSTACK_HOME": str(tmp_path / "home"),
        "CHEXSTACK_LOG_LEVEL": "WARNING",
    }
    return env


def test_cli_mixed_batch(
    kafka: str, topics: dict[str, str], store_dir: Path, tmp_path: Path, pixels: np.ndarray
) -> None:
    batch = tmp_path / "batch"
    (batch / "sub").mkdir(parents=True)
    (batch / "a.png").write_bytes(synth.make_png(pixels))
    (batch / "sub" / "b.dcm").write_bytes(synth.make_dicom(pixels))
    (batch / "c.png").write_text("not really a png\n")
    single = tmp_path / "single.jpg"
    single.write_bytes(synth.make_jpeg(pixels))
    env = _env(kafka, topics["prefix"], store_dir, tmp_path)

    first = _run([str(batch), str(single), "--patient-id", "MRN-12345"], env)
    assert first.returncode == 1, first.stderr
    lines = [line.split("\t") for line in first.stdout.splitlines()]
    assert [parts[0] for parts in lines] == [
        str(batch / "a.png"),
        str(batch / "c.png"),
        str(batch / "sub" / "b.dcm"),
        str(single),
    ]
    ids = [parts[1] for parts in lines if len(parts) == 2 and not parts[1].startswith("rejected")]
    assert len(ids) == 3 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    assert lines[1][1].startswith("rejected: ") and "text" in lines[1][1]
    msgs = uploaded(kafka, topics)
    assert sorted(m.image_id for m in msgs) == sorted(ids)
    generated_key = (store_dir / ".pseudonym-key").read_text().strip().encode()
    assert {m.patient for m in msgs} == {pseudonym(generated_key, "MRN-12345")}
    assert "MRN-12345" not in first.stdout + first.stderr

    again = _run([str(batch / "a.png"), str(single), "--patient-id", "MRN-12345"], env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == [
        f"{batch / 'a.png'}\t{ids[0]}\t(already uploaded)",
        f"{single}\t{ids[2]}\t(already uploaded)",
    ]
    assert len(uploaded(kafka, topics)) == 3


def test_cli_unreachable_kafka_exits_2(tmp_path: Path, store_dir: Path, pixels: np.ndarray) -> None:
    image = tmp_path / "a.png"
    image.write_bytes(synth.make_png(pixels))
    bootstrap = f"127.0.0.1:{free_port()}"
    result = _run([str(image)], _env(bootstrap, "", store_dir, tmp_path))
    assert result.returncode == 2
    assert bootstrap in result.stderr and result.stdout == ""
    assert blobs(store_dir) == []


def test_messages_are_json_with_the_v1_schema(
    uploader: Uploader, kafka: str, topics: dict[str, str], pixels: np.ndarray
) -> None:
    r = uploader.upload_bytes(synth.make_png(pixels), "a.png")
    ((key, value),) = read_topic(kafka, topics[UPLOADED])
    obj = json.loads(value or b"")
    assert key == (r.image_id or "").encode() and obj["schema"] == "xray.uploaded/v1"
    assert obj["patient"] is None and parse_uri(obj["blob_uri"]) == obj["sha256"]
