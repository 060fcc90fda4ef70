"""The README's shell blocks, each with where it runs, for the journeys tier (tests/journeys).

Every fenced ```bash block of README.md is a journey. The line before its fence may say where it runs:

    <!-- journey: local -->      as plain processes on this machine (the default)
    <!-- journey: platform -->   against the platform `make up` deployed (the e2e tier's instance)
    <!-- journey: ci -->         `make up` / `make test` themselves: what CI runs, around every tier

A usage synopsis (`[--flag X]`, placeholders) is not a shell block: fence it as ```text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

KINDS = ("local", "platform", "ci")
ANNOTATION = re.compile(r"^<!--\s*journey:\s*(\S+)\s*-->$")


@dataclass(frozen=True)
class Block:
    line: int  # 1-based line of the opening fence
    heading: str  # the section it is in
    kind: str
    text: str

    @property
    def name(self) -> str:
        return f"README.md:{self.line} ({self.heading})"


def blocks(path: Path) -> list[Block]:
    found = []
    lines = path.read_text(encoding="utf-8").splitlines()
    heading = "(top)"
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        elif line.startswith("```"):
            end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
            if end is None:
                raise ValueError(f"README.md:{i + 1}: a fenced block without its closing fence")
            if line.strip() == "```bash":
                m = ANNOTATION.match(lines[i - 1].strip()) if i else None
                kind = m.group(1) if m else "local"
                found.append(Block(i + 1, heading, kind, "\n".join(lines[i + 1 : end]) + "\n"))
            i = end  # a "#" inside a block is a comment, not a heading
        i += 1
    return found
