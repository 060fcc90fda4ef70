"""Both shipped notebooks run top to bottom headless (nbclient) inside the platform's JupyterLab container.

They run where users run them, with the container's CHEXSTACK_* environment (Kafka, serving, blob
store, the hub's URL and token, TensorBoard's URL): nothing is configured for the test. The repository's
notebook is copied next to its test inputs into a scratch directory of the container's work directory,
its `parameters` cell is replaced (papermill style), and the copy is executed; the shipped notebooks
are never overwritten.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.browser.conftest import INVALID_NAME, XRays, synth_xrays
from tests.platform_instance import (
    JUPYTER_WORK_DIR,
    JUPYTER_WORK_DIR_ON_HOST,
    ROOT,
    TENSORBOARD_URL,
    Platform,
    hub_api,
    hub_token,
    jupyter_container,
)

# The first test may deploy the platform (its session fixture), which takes far longer than one test.
pytestmark = pytest.mark.timeout(3600)

NOTEBOOKS = ROOT / "notebooks"
CELL_TIMEOUT_S = 900

# Runs in the container (python -c): replace the `parameters` cell's source, execute, save the copy.
RUNNER = r"""
import json, sys
import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

src, out, params = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
nb = nbformat.read(src, as_version=4)
tagged = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
if len(tagged) != 1:
    sys.exit(f"{src}: expected one cell tagged 'parameters', found {len(tagged)}")
tagged[0].source = "# Parameters injected by the test.\n" + "".join(
    f"{name} = {value!r}\n" for name, value in params.items()
)
client = NotebookClient(nb, timeout=int(sys.argv[4]), kernel_name="python3",
                        resources={"metadata": {"path": sys.argv[5]}})
try:
    client.execute()
except CellExecutionError as exc:
    nbformat.write(nb, out)
    sys.exit(f"cell failed:\n{exc}")
nbformat.write(nb, out)
print("executed", out)
"""


class Scratch:
    """A directory of the container's work directory, seen from the host and from the container."""

    def __init__(self) -> None:
        name = f".chexstack-tests/{uuid.uuid4().hex[:12]}"
        self.host = JUPYTER_WORK_DIR_ON_HOST / name
        self.container = f"{JUPYTER_WORK_DIR}/{name}"
        owner = JUPYTER_WORK_DIR_ON_HOST.stat()
        self.uid, self.gid = owner.st_uid, owner.st_gid
        self.host.mkdir(parents=True)
        self._chown(self.host.parent)

    def _chown(self, path: Path) -> None:
        os.chown(path, self.uid, self.gid)
        for p in path.rglob("*"):
            os.chown(p, self.uid, self.gid)

    def put(self, src: Path) -> str:
        """Copy a host file in (owned by the container's user); returns its path in the container."""
        shutil.copy(src, self.host / src.name)
        self._chown(self.host)
        return f"{self.container}/{src.name}"


@pytest.fixture
def scratch(platform: Platform) -> Iterator[Scratch]:
    s = Scratch()
    yield s
    shutil.rmtree(s.host, ignore_errors=True)


def execute(scratch: Scratch, notebook: str, params: dict[str, object]) -> dict[str, object]:
    """Execute a copy of notebooks/NOTEBOOK in the JupyterLab container; returns the executed notebook."""
    src = scratch.put(NOTEBOOKS / notebook)
    out = f"{scratch.container}/executed-{notebook}"
    proc = subprocess.run(
        [
            "docker",
            "exec",
            "--workdir",
            scratch.container,
            jupyter_container(),
            "python",
            "-c",
            RUNNER,
            src,
            out,
            json.dumps(params),
            str(CELL_TIMEOUT_S),
            scratch.container,
        ],
        capture_output=True,
        text=True,
        timeout=CELL_TIMEOUT_S * 2,
        check=False,
    )
    assert proc.returncode == 0, f"{notebook} failed headless:\n{proc.stdout[-5000:]}\n{proc.stderr[-8000:]}"
    executed: dict[str, object] = json.loads((scratch.host / f"executed-{notebook}").read_text())
    return executed


def outputs(nb: dict[str, object], kind: str) -> str:
    """All stdout text (kind "stream") or all HTML (kind "text/html") the notebook's cells produced."""
    parts = []
    for cell in nb["cells"]:  # type: ignore[attr-defined]
        for out in cell.get("outputs", []):
            if kind == "stream" and out["output_type"] == "stream" and out["name"] == "stdout":
                parts.append("".join(out["text"]) if isinstance(out["text"], list) else out["text"])
            elif kind != "stream" and kind in out.get("data", {}):
                data = out["data"][kind]
                parts.append("".join(data) if isinstance(data, list) else data)
    return "\n".join(parts)


@dataclass
class Table:
    rows: list[list[str]] = field(default_factory=list)  # cell texts; a link is its own "href=URL" cell


class Tables(HTMLParser):
    """The tables of an HTML text by their chexstack-* class."""

    def __init__(self, markup: str) -> None:
        super().__init__()
        self.tables: dict[str, Table] = {}
        self._open: list[Table | None] = []
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self.feed(markup)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            names = [c for c in (a.get("class") or "").split() if c.startswith("chexstack-")]
            self._open.append(self.tables.setdefault(names[0], Table()) if names else None)
        elif tag == "tr" and self._open and self._open[-1] is not None:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
        elif tag == "a" and self._row is not None and a.get("href"):
            self._row.append(f"href={a['href']}")

    def handle_endtag(self, tag: str) -> None:
        if tag == "table" and self._open:
            self._open.pop()
        elif tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None and self._open and self._open[-1] is not None:
            self._open[-1].rows.append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def test_upload_notebook_headless_predicts_and_rejects(scratch: Scratch, tmp_path: Path) -> None:
    xrays: XRays = synth_xrays(tmp_path / "xrays", seed=21)
    files = [scratch.put(p) for p in xrays.all]
    nb = execute(scratch, "upload_xrays.ipynb", {"THRESHOLD": 0.5, "SERVER_FILES": files, "WAIT_S": 300.0})

    report = [line.split("\t") for line in outputs(nb, "stream").splitlines() if line.count("\t") >= 2]
    rows = {r[0]: (r[1], "\t".join(r[2:])) for r in report}
    assert len(report) == 3, report
    assert set(rows) == {xrays.png.name, xrays.dicom.name, INVALID_NAME}, report
    assert rows[xrays.png.name][0] == "predicted", report
    assert rows[xrays.dicom.name][0] == "predicted", report
    status, reason = rows[INVALID_NAME]
    assert status == "rejected" and re.search(r"\w{3,}", reason), report


def test_models_notebook_headless_shows_models_jobs_and_counts(scratch: Scratch) -> None:
    status, body = hub_api("/v1/jobs?kind=train", hub_token())
    assert status == 200, body
    jobs_body = body["jobs"]
    assert isinstance(jobs_body, list)
    demo = [j for j in jobs_body if j["project"] == "demo"]
    assert demo, body
    job_id = demo[0]["id"]

    nb = execute(scratch, "models_and_training.ipynb", {"MODEL_NAME": None, "PREDICTION_WINDOW_S": 3600})
    assert hub_token() not in json.dumps(nb), "the hub token reached the notebook's outputs"
    markup = outputs(nb, "text/html")
    tables = Tables(markup).tables
    expected = {"chexstack-models", "chexstack-ab", "chexstack-jobs", "chexstack-prediction-counts"}
    missing = expected - set(tables)
    assert not missing, f"missing tables {missing} in:\n{markup[:5000]}"

    models = tables["chexstack-models"].rows
    assert any("stable" in cell for row in models for cell in row), models

    jobs = tables["chexstack-jobs"].rows
    job_rows = [r for r in jobs if any(job_id in c for c in r)]
    assert job_rows, (job_id, jobs)
    links = [c.removeprefix("href=") for c in job_rows[0] if c.startswith("href=")]
    assert any(link.startswith(TENSORBOARD_URL) for link in links), (TENSORBOARD_URL, job_rows[0])

    # The column of the counts (its header says predictions or count), at least one variant with one.
    header, *variants = tables["chexstack-prediction-counts"].rows
    col = next(i for i, h in enumerate(header) if re.search(r"prediction|count", h, re.I))
    counts = [int(r[col]) for r in variants if len(r) > col and re.fullmatch(r"\d+", r[col])]
    assert counts and max(counts) >= 1, (header, variants)
