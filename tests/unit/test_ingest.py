"""Uploader.read_path: the checks every file from disk passes before a byte of it is decoded.

The uploader's Kafka producer connects lazily, so no broker is needed to read a file; uploading is
tested against the real broker in tests/integration/test_upload.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from chexstack.blobstore import BlobStore
from chexstack.ingest.uploader import UnreadableFile, Uploader
from chexstack.settings import Limits


@pytest.fixture
def uploader(tmp_path: Path) -> Iterator[Uploader]:
    up = Uploader(
        bootstrap="127.0.0.1:1",
        store=BlobStore(tmp_path / "blobs"),
        key=b"k",
        limits=Limits(max_bytes=10, max_pixels=100),
    )
    yield up
    up.close()


def test_read_path_returns_the_bytes_of_a_file_within_the_limit(uploader: Uploader, tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"0123456789")
    assert uploader.read_path(tmp_path / "a.png") == b"0123456789"


def test_read_path_names_what_is_wrong(uploader: Uploader, tmp_path: Path) -> None:
    (tmp_path / "big.png").write_bytes(b"x" * 11)
    (tmp_path / "dir.png").mkdir()
    os.mkfifo(tmp_path / "pipe.png")  # opening it would block: it must be refused before
    cases = {"big.png": "file is 11 bytes, over the limit of 10", "dir.png": "not a file",
             "pipe.png": "not a file", "missing.png": "not a file"}  # fmt: skip
    for name, reason in cases.items():
        with pytest.raises(UnreadableFile) as info:
            uploader.read_path(tmp_path / name)
        assert str(info.value) == reason
        assert uploader.upload_path(tmp_path / name).reason == reason
