"""The ingest service for real: `chexstack ingest serve` as a process, the real broker, uploads from the CLI.

The service is the one holder of the pseudonym key on the platform: its clients (`chexstack upload
--ingest-url`, the notebooks' panel in test_notebook_upload.py) send bytes and a token, and the
pseudonyms on xray.uploaded are made with the key file the service was given.
"""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from chexstack.blobstore import open_store
from chexstack.cli import app
from chexstack.deid import pseudonym
from chexstack.messages import Uploaded, decode
from chexstack.synth import make_dicom, make_png, render_radiograph
from tests.conftest import free_port
from tests.integration.test_pipeline import read_topic
from tests.integration.workers import Proc, running_workers

pytestmark = pytest.mark.integration

KEY = "5f" * 32
TOKEN = "ingest-test-token-0123456789abcdef0123456789"


def wait_healthy(url: str, proc: Proc, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if proc.proc.poll() is not None:
            raise AssertionError(f"ingest serve exited {proc.proc.returncode}:\n{proc.text()[-3000:]}")
        time.sleep(0.2)
    raise AssertionError(f"ingest serve did not answer within {timeout_s} s:\n{proc.text()[-3000:]}")


@contextmanager
def running_ingest(kafka: str, prefix: str, store_dir: Path, tmp_path: Path) -> Iterator[tuple[str, Proc]]:
    """`chexstack ingest serve` with a key file and a token file, as the platform runs it; (URL, process)."""
    tmp_path.mkdir(exist_ok=True)
    key_file, token_file = tmp_path / "pseudonym-key", tmp_path / "ingest-token"
    key_file.write_text(KEY + "\n")
    token_file.write_text(TOKEN + "\n")
    port = free_port()
    env = {
        "CHEXSTACK_KAFKA": kafka,
        "CHEXSTACK_TOPIC_PREFIX": prefix,
        "CHEXSTACK_STORE": str(store_dir),
        "CHEXSTACK_PSEUDONYM_KEY_FILE": str(key_file),
        "CHEXSTACK_INGEST_TOKEN_FILE": str(token_file),
    }
    with running_workers(env, tmp_path) as w:
        proc = w.start("ingest", "serve", "--ingest-port", str(port))
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, proc)
        yield url, proc


@pytest.fixture
def ingest(kafka: str, topics: dict[str, str], store_dir: Path, tmp_path: Path) -> Iterator[tuple[str, Proc]]:
    with running_ingest(kafka, topics["prefix"], store_dir, tmp_path / "ingest") as service:
        yield service


def upload(url: str, token: str, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        app, ["upload", "--ingest-url", url, *args], env={"CHEXSTACK_INGEST_TOKEN": token}
    )
    return result.exit_code, result.output


def test_the_cli_uploads_through_the_service_with_the_services_key(
    kafka: str, topics: dict[str, str], store_dir: Path, ingest: tuple[str, Proc], tmp_path: Path
) -> None:
    url, proc = ingest
    rng = np.random.default_rng(8)
    files = tmp_path / "files"
    files.mkdir()
    (files / "chest.png").write_bytes(make_png(render_radiograph(rng, [], size=128)))
    (files / "chest.dcm").write_bytes(
        make_dicom(render_radiograph(rng, [], size=128), patient_name="DOE^JANE", patient_id="MRN-DICOM-31")
    )
    # A patient ID beyond ASCII travels percent-encoded in a header.
    code, out = upload(url, TOKEN, str(files), "--patient-id", "MRN-Ü-7")
    assert code == 0, out
    ids = dict(re.findall(r"(\S+)\t([0-9a-f]{32})$", out, re.M))
    assert set(ids) == {str(files / "chest.dcm"), str(files / "chest.png")}, out

    # The same files again: nothing is published twice.
    code, out = upload(url, TOKEN, str(files), "--patient-id", "MRN-Ü-7")
    assert code == 0 and out.count("(already uploaded)") == 2, out

    sent = [decode(Uploaded, v) for _, v in read_topic(kafka, topics["xray.uploaded"])]
    assert sorted(m.image_id for m in sent) == sorted(ids.values())
    # The pseudonym is the key file's (the service's), and the key never went into the store.
    assert {m.patient for m in sent} == {pseudonym(KEY.encode(), "MRN-Ü-7")}
    store = open_store(str(store_dir))
    assert not (store.root / ".pseudonym-key").exists()
    for m in sent:
        stored = store.get(m.blob_uri)
        for phi in (b"DOE^JANE", b"MRN-DICOM-31", "MRN-Ü-7".encode()):
            assert phi not in stored, (m.format, phi)
    assert "MRN" not in proc.text() and "DOE" not in proc.text(), proc.text()[-2000:]
    assert "POST /v1/uploads" in proc.text()

    # A file that is not an image: the service's reason, exit 1. A wrong token: nothing sent, exit 2.
    (tmp_path / "notes.png").write_text("not an image")
    code, out = upload(url, TOKEN, str(tmp_path / "notes.png"))
    assert code == 1 and "rejected: unsupported format (looks like text)" in out, out
    code, out = upload(url, "not-the-token", str(files / "chest.png"))
    assert code == 2 and "refused the token" in out, out
