"""Content-addressed blob store on a local (or mounted) filesystem.

Layout: `<root>/sha256/<hex[:2]>/<hex>`; blobs are addressed by URI `blob://sha256/<hex>`.
Publication markers live beside them in `<root>/published/<topic>/<hex[:2]>/<hex>`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse

URI_PREFIX = "blob://sha256/"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
# Topic names are [a-zA-Z0-9._-]; anything else would let a name escape the marker directory.
_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


class BlobError(Exception):
    """Base class of blob store errors."""


class BlobNotFound(BlobError, FileNotFoundError):
    """No blob with that digest exists in the store."""


class CorruptBlob(BlobError):
    """The stored bytes no longer hash to their address."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parse_uri(uri: str) -> str:
    """`blob://sha256/<hex>` -> `<hex>`; raises ValueError for anything else."""
    if not uri.startswith(URI_PREFIX) or not _HEX64.match(uri[len(URI_PREFIX) :]):
        raise ValueError(f"not a blob URI (expected {URI_PREFIX}<64 hex digits>): {uri!r}")
    return uri[len(URI_PREFIX) :]


def _check_sha(sha256: str) -> str:
    if not _HEX64.match(sha256):
        raise ValueError(f"not a sha256 hex digest: {sha256!r}")
    return sha256


def _fsync_dir(path: Path) -> None:
    # The rename is only durable once the directory entry is on disk too.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, data: bytes) -> None:
    """Write via a temp file in the same directory + fsync + os.replace: readers never see a partial file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".part")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


class BlobStore:
    """Immutable blobs keyed by their sha256; private to the owning user (files 0600, dirs 0700)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _mkdir(self, path: Path) -> None:
        # Create each missing level with 0700 explicitly: mkdir(mode=) is subject to the umask.
        missing = []
        p = path
        while not p.exists():
            missing.append(p)
            p = p.parent
        for d in reversed(missing):
            with contextlib.suppress(FileExistsError):
                d.mkdir(mode=0o700)
                os.chmod(d, 0o700)

    def path_for(self, sha256: str) -> Path:
        sha = _check_sha(sha256)
        return self.root / "sha256" / sha[:2] / sha

    def put(self, data: bytes) -> str:
        """Store `data` and return its URI; storing the same bytes again is a no-op."""
        sha = sha256_hex(data)
        path = self.path_for(sha)
        if not path.exists():
            self._mkdir(path.parent)
            _atomic_write(path, data)
        return URI_PREFIX + sha

    def get(self, uri: str) -> bytes:
        """The blob's bytes, verified against its address."""
        sha = parse_uri(uri)
        try:
            data = self.path_for(sha).read_bytes()
        except FileNotFoundError:
            raise BlobNotFound(f"blob not found in {self.root}: {uri}") from None
        actual = sha256_hex(data)
        if actual != sha:
            raise CorruptBlob(f"blob {uri} is corrupt: its content hashes to {actual}")
        return data

    def exists(self, sha256: str) -> bool:
        return self.path_for(sha256).is_file()

    def _marker(self, sha256: str, topic: str) -> Path:
        sha = _check_sha(sha256)
        if not _TOPIC.match(topic) or topic in (".", ".."):
            raise ValueError(f"invalid topic name: {topic!r}")
        return self.root / "published" / topic / sha[:2] / sha

    def mark_published(self, sha256: str, topic: str) -> None:
        """Record that the blob's Uploaded message reached `topic`, so a re-upload is not re-published."""
        marker = self._marker(sha256, topic)
        self._mkdir(marker.parent)
        _atomic_write(marker, b"")

    def is_published(self, sha256: str, topic: str) -> bool:
        return self._marker(sha256, topic).is_file()


def open_store(location: str | None) -> BlobStore:
    """A store from a directory path or `file:///path`; None means the default location."""
    if location is None or location == "":
        from chexstack.settings import default_store

        location = default_store()
    if "://" in location:
        parsed = urlparse(location)
        if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
            raise ValueError(f"unsupported blob store location (use a directory or file:///path): {location}")
        location = unquote(parsed.path)
    return BlobStore(Path(location).expanduser())
