"""The upload panel's fault paths: every file ends predicted, rejected or timed out, whatever breaks.

The faults are ones that cannot be caused on demand with the real parts (a disk filling up in the middle
of a batch, a decoder raising something unexpected, the tracking thread crashing), so the uploader and
tracker are stand-ins here; tests/integration/test_notebook_upload.py runs the panel for real.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from chexstack.ingest.uploader import IngestResult
from chexstack.notebook.env import NotebookSettings
from chexstack.notebook.tracker import Event
from chexstack.notebook.upload import UploadPanel


class FaultyUploader:
    """Uploads the first file, then the disk is full, then a decoder raises something unexpected."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None]] = []

    def read_path(self, path: Path) -> bytes:
        return path.read_bytes()

    def upload_bytes(self, data: bytes, name: str, patient_id: str | None = None) -> IngestResult:
        self.calls.append((name, patient_id))
        if len(self.calls) == 2:
            raise OSError(28, "No space left on device", "/var/lib/chexstack/blobs/ab")
        if len(self.calls) == 3:
            raise RuntimeError("PatientName=DOE^JANE could not be parsed")
        return IngestResult(name, f"{len(self.calls):032x}", None)

    def close(self) -> None:
        pass


class CrashingTracker:
    def positions(self) -> list[Any]:
        return []

    def follow(
        self, image_ids: Iterable[str], start: list[Any], on_event: Callable[[Event], None], **kw: Any
    ) -> set[str]:
        raise RuntimeError("consumer crashed")


def panel_with_fakes() -> tuple[UploadPanel, FaultyUploader]:
    panel = UploadPanel(NotebookSettings(kafka="127.0.0.1:1"), wait_s=5)
    uploader = FaultyUploader()
    panel._uploader = uploader  # type: ignore[assignment]
    panel._tracker = CrashingTracker()  # type: ignore[assignment]
    return panel, uploader


def rows(panel: UploadPanel) -> dict[str, tuple[str, str]]:
    out = {}
    for line in panel.report().splitlines():
        name, status, detail = line.split("\t")
        out[name] = (status, detail)
    return out


def test_a_failing_file_or_tracker_leaves_no_file_unfinished(tmp_path: Path) -> None:
    panel, _ = panel_with_fakes()
    paths = []
    for name in ("a.png", "b.png", "c.dcm"):
        paths.append(tmp_path / name)
        paths[-1].write_bytes(b"x")
    panel.upload_paths(paths)
    got = rows(panel.wait(timeout_s=30))
    assert got["a.png"] == ("timeout", "tracking stopped (RuntimeError: consumer crashed)")
    assert got["b.png"][0] == "rejected" and "No space left on device" in got["b.png"][1]
    assert got["c.dcm"] == ("rejected", "upload failed (RuntimeError)")  # no decoder text: it may hold PHI
    assert "DOE" not in panel.report() + panel.statuses.value + "".join(c.value for c in panel.cards.children)
    assert "consumer crashed" in panel.message.value
    assert all(s.data is None for s in panel.results())  # no original bytes kept once finished


def test_the_patient_id_applies_to_one_picked_batch_only() -> None:
    panel, uploader = panel_with_fakes()
    panel.patient.value = "MRN-0042"
    pick = {"name": "one.png", "type": "image/png", "size": 1, "content": memoryview(b"x")}
    panel.picker.value = ({**pick, "last_modified": datetime.now(UTC)},)
    assert panel.patient.value == "" and panel.picker.value == ()
    panel.picker.value = ({**pick, "name": "two.png", "last_modified": datetime.now(UTC)},)
    panel.wait(timeout_s=30)
    assert uploader.calls[0] == ("one.png", "MRN-0042")
    assert uploader.calls[1][1] is None
