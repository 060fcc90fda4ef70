"""The content-addressed blob store: layout, atomicity, verification, permissions, publication markers."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from chexstack.blobstore import BlobNotFound, BlobStore, CorruptBlob, open_store, parse_uri, sha256_hex


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_put_is_content_addressed(store_dir: Path) -> None:
    store = BlobStore(store_dir)
    data = b"radiograph bytes"
    sha = hashlib.sha256(data).hexdigest()
    uri = store.put(data)
    assert uri == f"blob://sha256/{sha}" and sha256_hex(data) == sha
    path = store_dir / "sha256" / sha[:2] / sha
    assert path.read_bytes() == data
    assert store.get(uri) == data
    assert store.exists(sha) and not store.exists("0" * 64)


def test_second_put_is_a_no_op(store_dir: Path) -> None:
    store = BlobStore(store_dir)
    uri = store.put(b"same")
    path = store.path_for(parse_uri(uri))
    before = path.stat()
    assert store.put(b"same") == uri
    after = path.stat()
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)


def test_no_temp_files_left_and_private_permissions(tmp_path: Path) -> None:
    old = os.umask(0o022)  # a permissive umask must not leak into the store
    try:
        store = BlobStore(tmp_path / "new" / "blobs")
        uri = store.put(b"x" * 1000)
        store.put(b"")
    finally:
        os.umask(old)
    path = store.path_for(parse_uri(uri))
    assert mode(path) == 0o600
    for d in (store.root, store.root / "sha256", path.parent):
        assert mode(d) == 0o700, d
    names = [p.name for p in store.root.rglob("*")]
    assert not any(n.startswith(".tmp-") or n.endswith(".part") for n in names)
    assert store.get(store.put(b"")) == b""


def test_get_verifies_the_hash(store_dir: Path) -> None:
    store = BlobStore(store_dir)
    uri = store.put(b"original")
    path = store.path_for(parse_uri(uri))
    os.chmod(path, 0o600)
    path.write_bytes(b"tampered")
    with pytest.raises(CorruptBlob, match="corrupt"):
        store.get(uri)


def test_get_missing_and_bad_uris(store_dir: Path) -> None:
    store = BlobStore(store_dir)
    with pytest.raises(BlobNotFound):
        store.get("blob://sha256/" + "a" * 64)
    for bad in ("blob://sha256/../../etc/passwd", "file:///etc/passwd", "blob://sha256/ABC", ""):
        with pytest.raises(ValueError):
            store.get(bad)
    with pytest.raises(ValueError):
        store.exists("../x")


def test_published_markers(store_dir: Path) -> None:
    store = BlobStore(store_dir)
    sha = parse_uri(store.put(b"image"))
    assert not store.is_published(sha, "xray.uploaded")
    store.mark_published(sha, "xray.uploaded")
    assert store.is_published(sha, "xray.uploaded")
    assert not store.is_published(sha, "tenant2.xray.uploaded")  # per topic
    store.mark_published(sha, "xray.uploaded")  # idempotent
    assert BlobStore(store_dir).is_published(sha, "xray.uploaded")  # survives a new instance
    with pytest.raises(ValueError):
        store.mark_published(sha, "../escape")


def test_open_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert open_store(str(tmp_path)).root == tmp_path
    assert open_store(f"file://{tmp_path}").root == tmp_path
    monkeypatch.setenv("CHEXSTACK_HOME", str(tmp_path / "home"))
    assert open_store(None).root == tmp_path / "home" / "blobs"
    with pytest.raises(ValueError, match="unsupported"):
        open_store("s3://bucket/blobs")
