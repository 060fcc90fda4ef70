"""Fixtures of the browser tier: the shared platform instance (healthy), test X-rays, artefacts, Chromium.

The instance is tests/conftest.py's session fixture `e2e_platform`: under `make e2e` the one deployment
tests/e2e/test_platform.py made (these tests then run after its last test, on the re-upped platform);
under `make browser` this tier deploys it itself.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, sync_playwright

from tests.platform_instance import BIN, ROOT, Platform, wait_healthy

# Playwright cannot download its own browser here: Debian's chromium (scripts/install-system-deps.sh).
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# A text file named like an image: the upload path must reject it, naming it and the reason.
INVALID_NAME = "not-an-xray.png"


@dataclass(frozen=True)
class XRays:
    """One synthetic PNG, one synthetic DICOM and one invalid file, in one host directory."""

    png: Path
    dicom: Path
    invalid: Path

    @property
    def all(self) -> list[Path]:
        return [self.png, self.dicom, self.invalid]


@pytest.fixture(scope="session")
def platform(e2e_platform: Platform) -> Platform:
    """The instance, with every container running and healthy (after `make down` + `make up` too)."""
    wait_healthy()
    return e2e_platform


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Where the tier leaves screenshots: $CHEXSTACK_TEST_ARTIFACTS/browser (default: tests/artifacts)."""
    root = Path(os.environ.get("CHEXSTACK_TEST_ARTIFACTS") or ROOT / "tests" / "artifacts")
    path = root / "browser"
    path.mkdir(parents=True, exist_ok=True)
    return path


def synth_xrays(out: Path, seed: int) -> XRays:
    """Synthetic radiographs from the project's generator (`chexstack data synth`) plus an invalid file."""
    subprocess.run(
        [str(BIN / "chexstack"), "data", "synth", "--out", str(out), "--count", "2", "--seed", str(seed)],
        check=True,
        capture_output=True,
        text=True,
    )
    pngs = sorted((out / "images").glob("*.png"))
    dicoms = sorted((out / "dicom").glob("*.dcm"))
    assert pngs and dicoms, sorted(p.name for p in out.rglob("*"))
    invalid = out / INVALID_NAME
    invalid.write_text("This is a text file, not a radiograph.\n")
    return XRays(png=pngs[0], dicom=dicoms[0], invalid=invalid)


@pytest.fixture(scope="session")
def chromium() -> Iterator[Browser]:
    """Debian's Chromium driven by Playwright (sync API), headless."""
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()
