"""The notebook's upload panel for real: broker, `chexstack serve`, preprocess and router processes.

The panel runs outside a kernel here (ipywidgets without a front end); the browser tier drives the same
panel in JupyterLab.
"""

from __future__ import annotations

import re
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from chexstack.messages import Prediction, decode
from chexstack.notebook.env import NotebookSettings
from chexstack.notebook.upload import UploadPanel
from chexstack.synth import make_dicom, make_png, render_radiograph
from chexstack.topics import Topics
from tests.conftest import free_port
from tests.integration.test_pipeline import read_topic
from tests.integration.workers import running_workers

pytestmark = pytest.mark.integration


def statuses(panel: UploadPanel) -> dict[str, str]:
    return {line.split("\t")[0]: line.split("\t")[1] for line in panel.report().splitlines()}


def test_panel_uploads_follows_and_shows_cards(
    kafka: str,
    topics: dict[str, str],
    store_dir: Path,
    serve_factory,  # type: ignore[no-untyped-def]
    model_base: Path,
    tmp_path: Path,
) -> None:
    server = serve_factory(model_base=model_base)
    env = {
        "CHEXSTACK_KAFKA": kafka,
        "CHEXSTACK_STORE": str(store_dir),
        "CHEXSTACK_TOPIC_PREFIX": topics["prefix"],
        "CHEXSTACK_SERVING": server.grpc_target,
    }
    rng = np.random.default_rng(5)
    png = tmp_path / "chest.png"
    png.write_bytes(make_png(render_radiograph(rng, ["Cardiomegaly"], size=256)))
    dcm = tmp_path / "chest.dcm"
    dcm.write_bytes(make_dicom(render_radiograph(rng, [], size=256), patient_id="MRN-NOTEBOOK-77"))
    bad = tmp_path / "notes.png"
    bad.write_text("this is not an image")
    twin = tmp_path / "twin.png"  # the same image picked twice in one batch
    twin.write_bytes(png.read_bytes())

    settings = NotebookSettings(
        kafka=kafka, serving=server.grpc_target, store=str(store_dir), topic_prefix=topics["prefix"]
    )
    with running_workers(env, tmp_path) as w:
        w.wait_assigned([w.start("preprocess"), w.start("route")])
        panel = UploadPanel(settings, threshold=0.5, wait_s=240)
        panel.upload_paths([png, dcm, bad, twin], patient_id="MRN-NOTEBOOK-77")
        assert statuses(panel.wait()) == {
            "chest.png": "predicted",
            "chest.dcm": "predicted",
            "notes.png": "rejected",
            "twin.png": "predicted",
        }, panel.report()

        # The widget path: what JupyterLab's file picker sets, the same file again (a re-upload).
        panel.picker.value = (
            {"name": "again.png", "type": "image/png", "size": png.stat().st_size,
             "content": memoryview(png.read_bytes()), "last_modified": datetime.now(UTC)},
        )  # fmt: skip
        assert panel.picker.value == ()  # cleared so the same files can be picked again
        assert statuses(panel.wait())["again.png"] == "predicted", panel.report()
        panel.close()

    cards_html = [c.value for c in panel.cards.children]
    cards = [h for h in cards_html if 'class="chexstack-card"' in h]
    rejected = [h for h in cards_html if 'class="chexstack-rejected"' in h]
    assert len(cards) == 4 and len(rejected) == 1
    assert "notes.png" in rejected[0] and "rejected:" in rejected[0]
    for html in cards:
        assert "CAM: " in html and 'class="cx-cam"' in html  # the explain signature answered
        assert re.search(r"model chexnet v2 · variant latest · end-to-end \d+ ms", html), html[-500:]
        assert len(re.findall(r'class="cx-bar[ "]', html)) == 14
    assert "MRN-NOTEBOOK-77" not in "".join(cards_html) + panel.statuses.value
    assert panel.statuses.value.count('data-status="predicted"') == 4

    # Nothing was processed twice: the re-upload found its earlier prediction.
    t = Topics(topics["prefix"])
    per_image = Counter(decode(Prediction, v).image_id for _, v in read_topic(kafka, t.predictions))
    assert sorted(per_image.values()) == [1, 1]

    # The threshold slider re-renders the cards.
    panel.threshold.value = 0.0
    assert all(
        "no finding at or over" not in c.value for c in panel.cards.children if "chexstack-card" in c.value
    )


def test_panel_names_an_unreachable_broker(store_dir: Path, tmp_path: Path) -> None:
    bad = f"127.0.0.1:{free_port()}"
    panel = UploadPanel(NotebookSettings(kafka=bad, store=str(store_dir)), wait_s=5)
    png = tmp_path / "a.png"
    png.write_bytes(make_png(render_radiograph(np.random.default_rng(1), [], size=64)))
    panel.upload_paths([png])
    assert "Cannot upload" in panel.message.value and bad in panel.message.value
    assert statuses(panel) == {"a.png": "rejected"}
    assert "not uploaded" in panel.report()
