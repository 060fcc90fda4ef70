"""The upload notebook in a real browser: Debian's Chromium (Playwright) against the playbook's JupyterLab.

A user's first steps after `make up`: open JupyterLab with the token, run all cells of
upload_xrays.ipynb, pick a PNG, a DICOM and a file that is no image; two result cards and one rejection
appear. The page is saved as a screenshot under the test artefacts (tests/artifacts/browser/). Without
the token the server refuses access.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page
from playwright.sync_api import Error as PlaywrightError

from chexstack.labels import LABELS
from tests.browser.conftest import INVALID_NAME, synth_xrays
from tests.platform_instance import JUPYTER_URL, VARS, Platform, jupyter_token

# The first test may deploy the platform (its session fixture), which takes far longer than one test.
pytestmark = pytest.mark.timeout(3600)

NOTEBOOK = "upload_xrays.ipynb"
# Generous waits, never asserted on: a cold kernel imports TensorFlow-sized packages on 2 cores.
OPEN_MS = 180_000
RESULTS_MS = 300_000


class PageLog:
    """JupyterLab's console messages and page errors, for the failure message."""

    def __init__(self, page: Page) -> None:
        self.lines: list[str] = []
        page.on("console", lambda m: self.lines.append(f"console.{m.type}: {m.text}"))
        page.on("pageerror", lambda e: self.lines.append(f"page error: {e}"))

    def tail(self, n: int = 80) -> str:
        return "\n".join(self.lines[-n:]) or "(none)"


@pytest.fixture
def page(chromium: Browser) -> Iterator[Page]:
    context = chromium.new_context(viewport={"width": 1400, "height": 1300})
    try:
        yield context.new_page()
    finally:
        context.close()
        shut_down_sessions()


def shut_down_sessions() -> None:
    """Shut the kernel the test started down (the platform's JupyterLab keeps running)."""
    token = jupyter_token()
    status, sessions = api("/api/sessions", token)
    for s in sessions if status == 200 and isinstance(sessions, list) else []:
        if s.get("path", "").endswith(NOTEBOOK):
            req = urllib.request.Request(
                f"{JUPYTER_URL}/api/sessions/{s['id']}",
                method="DELETE",
                headers={"Authorization": f"token {token}"},
            )
            urllib.request.urlopen(req, timeout=60).close()


def api(path: str, token: str | None) -> tuple[int, object]:
    headers = {"Authorization": f"token {token}"} if token else {}
    req = urllib.request.Request(f"{JUPYTER_URL}{path}", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def kernel_state(token: str) -> str | None:
    """The execution state of the kernel of the notebook's session (None while there is none)."""
    status, sessions = api("/api/sessions", token)
    assert status == 200, sessions
    assert isinstance(sessions, list)
    states = [s["kernel"]["execution_state"] for s in sessions if s.get("path", "").endswith(NOTEBOOK)]
    return states[0] if states else None


def wait_kernel_idle(token: str, timeout_s: float = OPEN_MS / 1000) -> None:
    deadline = time.monotonic() + timeout_s
    state = None
    while time.monotonic() < deadline:
        state = kernel_state(token)
        if state == "idle":
            return
        time.sleep(1)
    raise AssertionError(f"the kernel of {NOTEBOOK} did not become idle (last state: {state})")


def run_all_cells(page: Page) -> None:
    """Run > Run All Cells, as the notebook's first cell tells the user."""
    page.locator("#jp-MainMenu").get_by_text("Run", exact=True).click()
    page.locator(".lm-Menu").get_by_text("Run All Cells", exact=True).click()


def dismiss_news(page: Page) -> None:
    """Answer JupyterLab's "notified about official Jupyter news?" toast, if shown, so it leaves the shot."""
    toast = page.locator(".Toastify__toast", has_text="Jupyter news")
    if toast.count():
        toast.get_by_role("button", name="No", exact=True).click()
        toast.wait_for(state="detached", timeout=10_000)


# Every cell has run (no "[*]" or empty prompt left) once the last code cell shows an execution count.
CELLS_DONE_JS = """() => {
  const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')];
  return prompts.length > 0 && prompts.every(p => /\\[\\d+\\]/.test(p.textContent));
}"""

RESULTS_JS = """() => {
  const panel = document.querySelector('.chexstack-upload');
  return panel !== null && panel.querySelectorAll('.chexstack-card').length >= 2
    && panel.querySelectorAll('.chexstack-rejected').length >= 1;
}"""


def test_upload_widget_shows_two_cards_and_one_rejection(
    platform: Platform, page: Page, artifacts: Path, tmp_path: Path
) -> None:
    xrays = synth_xrays(tmp_path / "xrays", seed=22)
    token = jupyter_token()
    log = PageLog(page)
    (artifacts / "upload-failure.png").unlink(missing_ok=True)
    try:
        page.goto(f"{JUPYTER_URL}/lab/tree/{NOTEBOOK}?token={token}", timeout=OPEN_MS)
        page.locator(".jp-NotebookPanel .jp-Cell").first.wait_for(timeout=OPEN_MS)
        wait_kernel_idle(token)
        run_all_cells(page)
        panel = page.locator(".chexstack-upload")
        # ipywidgets' FileUpload button (its <input type=file> is never attached to the page): the
        # user's click opens the file chooser, which Playwright answers with the three files.
        picker = panel.locator(".widget-upload")
        picker.wait_for(state="visible", timeout=OPEN_MS)
        page.wait_for_function(CELLS_DONE_JS, timeout=OPEN_MS)
        wait_kernel_idle(token)

        with page.expect_file_chooser(timeout=60_000) as chooser:
            picker.click()
        assert chooser.value.is_multiple(), "the upload widget must take several files at once"
        chooser.value.set_files([str(p) for p in xrays.all])
        page.wait_for_function(RESULTS_JS, timeout=RESULTS_MS, polling=1000)

        cards = panel.locator(".chexstack-card")
        rejected = panel.locator(".chexstack-rejected")
        assert cards.count() == 2
        assert rejected.count() == 1
        # One card per valid file, each with the 14 findings' bars and the model that answered.
        card_texts = [cards.nth(i).inner_text() for i in range(2)]
        for name in (xrays.png.name, xrays.dicom.name):
            assert sum(name in t for t in card_texts) == 1, (name, card_texts)
        for text in card_texts:
            assert all(label.replace("_", " ") in text or label in text for label in LABELS), text
            assert VARS["chexstack_model_name"] in text, text
        # The rejection names the file and says why.
        reason = rejected.inner_text()
        assert INVALID_NAME in reason
        rest = reason.replace(INVALID_NAME, "").replace("rejected", "")
        assert re.search(r"\w{3,}", rest), reason
        assert xrays.png.name not in reason and xrays.dicom.name not in reason

        dismiss_news(page)
        panel.evaluate("e => e.scrollIntoView({block: 'start'})")
        page.screenshot(path=str(artifacts / "upload-first-xray.png"), full_page=True)
    except (AssertionError, PlaywrightError) as exc:
        try:
            page.screenshot(path=str(artifacts / "upload-failure.png"), full_page=True)
            status = page.locator(".chexstack-upload").inner_text(timeout=5000)
        except PlaywrightError as shot_exc:
            status = f"(no upload panel: {shot_exc})"
        report = (
            f"{exc}\n\nupload panel:\n{status}\n\nJupyterLab console and page errors:\n{log.tail()}\n"
            f"screenshot: {artifacts / 'upload-failure.png'}"
        )
        # Playwright's errors quote the URL, and with it the token: keep it out of the CI log.
        raise AssertionError(report.replace(token, "<token>")) from None
    assert (artifacts / "upload-first-xray.png").stat().st_size > 10_000


def test_jupyterlab_refuses_access_without_the_token(platform: Platform, page: Page) -> None:
    token = jupyter_token()
    status, body = api("/api/contents", None)
    assert status == 403, body
    status, body = api("/api/contents", "not-the-token-0123456789abcdef0123456789")
    assert status == 403, body
    # The same request with the token succeeds and lists the notebook the browser would open.
    status, body = api("/api/contents", token)
    assert status == 200, body
    assert isinstance(body, dict)
    assert NOTEBOOK in [c["name"] for c in body["content"]]

    # In the browser: the notebook's URL without the token lands on the login page, not the notebook.
    page.goto(f"{JUPYTER_URL}/lab/tree/{NOTEBOOK}", timeout=OPEN_MS)
    assert "/login" in page.url, page.url
    page.locator("input[type=password]").first.wait_for(timeout=30_000)
    assert page.locator(".jp-NotebookPanel").count() == 0
    assert page.locator(".chexstack-upload").count() == 0
