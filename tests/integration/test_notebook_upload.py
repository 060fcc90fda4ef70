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

from chexstack.blobstore import open_store
from chexstack.deid import load_or_create_key, pseudonym
from chexstack.labels import LABELS
from chexstack.messages import Prediction, Uploaded, decode
from chexstack.notebook.env import NotebookSettings
from chexstack.notebook.upload import UploadPanel
from chexstack.synth import make_dicom, make_png, render_radiograph
from chexstack.topics import Topics
from tests.conftest import free_port
from tests.integration.conftest import ServeFactory
from tests.integration.test_ingest import KEY as INGEST_KEY
from tests.integration.test_ingest import TOKEN as INGEST_TOKEN
from tests.integration.test_ingest import running_ingest
from tests.integration.test_pipeline import read_topic
from tests.integration.workers import running_workers

pytestmark = pytest.mark.integration


def statuses(panel: UploadPanel) -> dict[str, str]:
    return {line.split("\t")[0]: line.split("\t")[1] for line in panel.report().splitlines()}


def image_id_of(card: str) -> str:
    found = re.search(r'data-image-id="([0-9a-f]{32})"', card)
    assert found is not None, card[:200]
    return found.group(1)


def findings_shown(card: str) -> set[str]:
    """The labels a card lists as findings (an empty set for "no finding at or over ...")."""
    found = re.search(r'<div class="cx-findings">Findings:(.*?)</div>', card, re.S)
    assert found is not None, card[:400]
    text = found.group(1).strip()
    if text.startswith("no finding at or over"):
        return set()
    return set(re.findall(r"(\w+) \(\d\.\d\d\)", text))


def test_panel_uploads_follows_and_shows_cards(
    kafka: str,
    topics: dict[str, str],
    store_dir: Path,
    serve_factory: ServeFactory,
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

    with (
        running_ingest(kafka, topics["prefix"], store_dir, tmp_path / "ingest") as (ingest_url, _),
        running_workers(env, tmp_path) as w,
    ):
        # As on the platform: uploads through the ingest service, which holds the key.
        settings = NotebookSettings(
            kafka=kafka, serving=server.grpc_target, topic_prefix=topics["prefix"], ingest_url=ingest_url,
            ingest_token=INGEST_TOKEN,
        )  # fmt: skip
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
    # Pseudonymised by the ingest service with its key; the notebook never had one.
    sent = [decode(Uploaded, v) for _, v in read_topic(kafka, t.uploaded)]
    assert {m.patient for m in sent} == {pseudonym(INGEST_KEY.encode(), "MRN-NOTEBOOK-77")}

    # The threshold slider re-renders the same card widgets: the findings shown are the labels whose
    # probability (as published on the topic) is at or over it.
    published = {p.image_id: p for p in (decode(Prediction, v) for _, v in read_topic(kafka, t.predictions))}
    widgets = [c for c in panel.cards.children if 'class="chexstack-card"' in c.value]
    first = published[image_id_of(widgets[0].value)]
    middle = sorted(first.probabilities, reverse=True)[6]  # exactly 7 of the first card's 14 at or over
    rendered: dict[float, list[str]] = {}
    for threshold in (1.0, 0.0, middle):
        panel.threshold.value = threshold
        assert [c for c in panel.cards.children if 'class="chexstack-card"' in c.value] == widgets
        rendered[threshold] = [w.value for w in widgets]
        for widget in widgets:
            prediction = published[image_id_of(widget.value)]
            expected = {label for label, p in prediction.by_label().items() if p >= threshold}
            assert findings_shown(widget.value) == expected, (threshold, widget.value[:400])
            assert len(re.findall(r'class="cx-bar cx-over"', widget.value)) == len(expected)
            if not expected:
                assert f"no finding at or over {threshold:.2f}" in widget.value
    assert all(findings_shown(card) == set(LABELS) for card in rendered[0.0])
    assert len(findings_shown(rendered[middle][0])) == 7
    assert all(a != b for a, b in zip(rendered[1.0], rendered[0.0], strict=True))


def test_the_patient_id_applies_to_one_picked_batch_only(
    kafka: str, topics: dict[str, str], store_dir: Path, tmp_path: Path
) -> None:
    """Two batches picked in the widget, the patient ID typed before the first only: on the real broker,
    the first batch's message carries that patient's pseudonym and the second batch's carries none.
    No workers run: xray.uploaded is what is judged, so the batches are left to time out."""
    settings = NotebookSettings(kafka=kafka, store=str(store_dir), topic_prefix=topics["prefix"])
    panel = UploadPanel(settings, wait_s=1)
    rng = np.random.default_rng(11)
    one, two = (make_png(render_radiograph(rng, [], size=96)) for _ in range(2))

    def pick(name: str, data: bytes) -> None:
        panel.picker.value = (
            {"name": name, "type": "image/png", "size": len(data), "content": memoryview(data),
             "last_modified": datetime.now(UTC)},
        )  # fmt: skip

    panel.patient.value = "MRN-BATCH-ONE"
    pick("one.png", one)
    assert panel.patient.value == ""  # cleared for the next batch
    pick("two.png", two)
    panel.wait()
    panel.close()

    ids = {s.name: s.image_id or "" for s in panel.results()}
    assert "" not in ids.values(), panel.report()
    sent = {
        m.image_id: m for m in (decode(Uploaded, v) for _, v in read_topic(kafka, topics["xray.uploaded"]))
    }
    assert sorted(sent) == sorted(ids.values())
    key = load_or_create_key(open_store(str(store_dir)), None)
    assert sent[ids["one.png"]].patient == pseudonym(key, "MRN-BATCH-ONE")
    assert sent[ids["two.png"]].patient is None


def test_panel_names_an_unreachable_broker(store_dir: Path, tmp_path: Path) -> None:
    bad = f"127.0.0.1:{free_port()}"
    panel = UploadPanel(NotebookSettings(kafka=bad, store=str(store_dir)), wait_s=5)
    png = tmp_path / "a.png"
    png.write_bytes(make_png(render_radiograph(np.random.default_rng(1), [], size=64)))
    panel.upload_paths([png])
    assert "Cannot upload" in panel.message.value and bad in panel.message.value
    assert statuses(panel) == {"a.png": "rejected"}
    assert "not uploaded" in panel.report()
