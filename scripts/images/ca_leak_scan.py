"""Look for the host's extra CA certificates in every layer of some images (used by verify.sh).

usage: docker save IMAGE... | python3 ca_leak_scan.py HOST_BUNDLE IMAGE_BUNDLE

"Extra" certificates are those in HOST_BUNDLE (the bundle passed as the build secret) that Debian does
not ship: not in IMAGE_BUNDLE (the bundle the images carry) nor in any version of
/usr/share/ca-certificates/ found in the layers (an older host ca-certificates package still lists
roots that Debian has since removed; those are public, not the host's own). Each layer tarball in the
`docker save` stream is read file by file, deleted-later files included, looking for each extra
certificate as PEM (its 64-character base64 lines) and, in files under 16 MiB, as DER bytes (Java
keystores) and as unwrapped base64. Prints the hits; exits 1 when there is any.
"""

from __future__ import annotations

import base64
import re
import sys
import tarfile

SMALL = 16 << 20
PEM = re.compile(rb"-----BEGIN CERTIFICATE-----\s*(.+?)\s*-----END CERTIFICATE-----", re.S)


def bodies(path: str) -> list[bytes]:
    with open(path, "rb") as f:
        return [b"".join(m.group(1).split()) for m in PEM.finditer(f.read())]


def main() -> int:
    host, image = bodies(sys.argv[1]), set(bodies(sys.argv[2]))
    extra = [b for b in host if b not in image]
    print(f"host bundle: {len(host)} certificates, {len(extra)} not in the images' Debian bundle")
    if not extra:
        print("nothing the host adds could leak")
        return 0
    lines: dict[bytes, int] = {}  # full 64-char PEM lines (not the first: common ASN.1 prefixes)
    needles: list[tuple[bytes, int]] = []
    for i, body in enumerate(extra):
        for k in range(64, len(body) - 64, 64):
            lines[body[k : k + 64]] = i
        der = base64.b64decode(body)
        needles.append((der[len(der) // 2 : len(der) // 2 + 48], i))
        needles.append((body[len(body) // 2 : len(body) // 2 + 48], i))
    hits: list[tuple[int, str]] = []
    debian: set[bytes] = set()
    layers = files = 0
    with tarfile.open(fileobj=sys.stdin.buffer, mode="r|") as outer:
        for member in outer:
            if not member.isfile() or not (
                member.name.endswith("layer.tar") or member.name.startswith("blobs/")
            ):
                continue
            src = outer.extractfile(member)
            if src is None:
                continue
            try:
                inner = tarfile.open(fileobj=src, mode="r|")  # noqa: SIM115 (closed by `with inner`)
            except tarfile.TarError:
                continue  # a config or manifest blob, not a layer
            layers += 1
            with inner:
                for f in inner:
                    data = inner.extractfile(f) if f.isfile() else None
                    if data is None:
                        continue
                    files += 1
                    content = data.read()
                    if "usr/share/ca-certificates/" in f.name and len(content) < SMALL:
                        debian.update(b"".join(m.group(1).split()) for m in PEM.finditer(content))
                    found = {
                        lines[ln[:64]]
                        for ln in content.split(b"\n")
                        if 64 <= len(ln) <= 65 and ln[:64] in lines
                    }
                    if len(content) < SMALL:
                        found |= {i for needle, i in needles if needle in content}
                    hits.extend((i, f"{member.name}: {f.name}") for i in sorted(found))
    own = {i for i, body in enumerate(extra) if body not in debian}
    print(f"scanned {files} files in {layers} layers; {len(own)} host certificate(s) are in no Debian file")
    leaks = [(i, where) for i, where in hits if i in own]
    for i, where in leaks:
        print(f"LEAK host certificate #{i} in {where}")
    return 1 if leaks else 0


if __name__ == "__main__":
    sys.exit(main())
