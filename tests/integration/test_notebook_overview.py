"""The models and training overview against the real broker and a real `chexstack hub serve` process.

Prediction counts: messages with explicit timestamps in and out of the window, out of timestamp order,
transactional (committed and aborted) and undecodable ones. The hub sections: versions and labels from a
models.config, A/B weights from the control topic, a finished train job with its TensorBoard run.
"""

from __future__ import annotations

import html
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from confluent_kafka import Producer

from chexstack.ab import publish_weights
from chexstack.bus import TopicMissing, TopicReader, make_producer, producer_config
from chexstack.hub.store import Hub
from chexstack.labels import LABELS
from chexstack.messages import Latency, Prediction, now_ms
from chexstack.notebook import overview
from chexstack.notebook.env import NotebookSettings
from chexstack.predictions import count_predictions
from tests.conftest import free_port
from tests.integration.conftest import MODEL_NAME, models_config
from tests.integration.test_hub import HubApi

pytestmark = pytest.mark.integration

HOUR_MS = 3_600_000
TOKEN = "overview-hub-s3cret"
TB = "http://127.0.0.1:6006"


def prediction(version: int, variant: str, at_ms: int, model_name: str = MODEL_NAME) -> bytes:
    return Prediction(
        image_id=uuid.uuid4().hex,
        model_name=model_name,
        model_version=version,
        variant=variant,
        probabilities=tuple([0.25] * len(LABELS)),
        latency=Latency(preprocess_ms=1, queue_ms=1, serving_ms=1, end_to_end_ms=3),
        predicted_at_ms=at_ms,
    ).to_bytes()


def produce(producer: Producer, topic: str, items: list[tuple[bytes, int]]) -> None:
    """Each value with its own record timestamp (ms), on keys that spread over the partitions."""
    for value, ts in items:
        producer.produce(topic, value=value, key=uuid.uuid4().hex, timestamp=ts)
    assert producer.flush(30) == 0


def cells(markup: str, css_class: str) -> list[list[str]]:
    table = re.search(rf'<table class="{css_class}">.*?<tbody>(.*?)</tbody>', markup, re.S)
    assert table is not None, markup
    return [
        [" ".join(re.sub(r"<[^>]+>", " ", c).split()) for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
        for row in re.findall(r"<tr>(.*?)</tr>", table.group(1), re.S)
    ]


def test_counts_the_window_per_version_and_variant(kafka: str, topics: dict[str, str]) -> None:
    topic = topics["xray.predictions"]
    now = now_ms()
    old, recent = now - 2 * HOUR_MS, now - 60_000
    producer = make_producer(kafka)
    produce(producer, topic, [(prediction(1, "stable", old), old)] * 4)
    produce(
        producer,
        topic,
        [(prediction(1, "stable", recent), recent + i) for i in range(3)]
        + [(prediction(2, "canary", recent), recent + 10 + i) for i in range(2)]
        + [(prediction(7, "latest", recent, "other"), recent + 20)]
        + [(b"not a prediction", recent + 30)],
    )
    # Old by its timestamp but written after the recent ones: outside the window all the same.
    produce(producer, topic, [(prediction(1, "stable", old), old + 5)] * 2)

    result = count_predictions(kafka, topic, window_s=3600, timeout_s=30)
    assert result.counts == {
        (MODEL_NAME, 1, "stable"): 3,
        (MODEL_NAME, 2, "canary"): 2,
        ("other", 7, "latest"): 1,
    }
    assert (result.undecodable, result.complete, result.total) == (1, True, 6)
    assert result.until_ms - result.since_ms == HOUR_MS and result.until_ms >= now

    wider = count_predictions(kafka, topic, window_s=3 * 3600, timeout_s=30)
    assert wider.counts[(MODEL_NAME, 1, "stable")] == 9

    # A new prediction: the next read counts it.
    produce(producer, topic, [(prediction(2, "canary", now_ms()), now_ms())])
    settings = NotebookSettings(kafka=kafka, topic_prefix=topics["prefix"], hub_token=TOKEN)
    markup = overview.section_prediction_counts(settings, window_s=3600)
    assert cells(markup, "chexstack-prediction-counts") == [
        [f"{MODEL_NAME} *", "v1", "stable", "3", "50.0 %"],
        [f"{MODEL_NAME} *", "v2", "canary", "3", "50.0 %"],
        ["other", "v7", "latest", "1", "100.0 %"],
    ]
    assert "7 predictions" in markup and "1 message(s) were not predictions" in markup


def test_transactional_output_counts_only_committed_and_the_read_ends(
    kafka: str, topics: dict[str, str]
) -> None:
    """The workers write predictions in transactions: commit markers take offsets after the last message
    and aborted messages are never delivered, so the read must end without waiting for its time limit."""
    topic = topics["xray.predictions"]
    producer = Producer(producer_config(kafka, **{"transactional.id": f"overview-{uuid.uuid4().hex[:8]}"}))
    producer.init_transactions(30)
    now = now_ms()
    for commit, items in ((True, 3), (False, 2), (True, 1)):
        producer.begin_transaction()
        produce(producer, topic, [(prediction(3, "canary" if commit else "stable", now), now)] * items)
        if commit:
            producer.commit_transaction(30)
        else:
            producer.abort_transaction(30)
    result = count_predictions(kafka, topic, window_s=600, timeout_s=120)
    assert result.counts == {(MODEL_NAME, 3, "canary"): 4}
    # Complete: every partition was read to its end, none was cut off by the time limit, although the
    # transaction markers take offsets after the last message delivered (6 messages were written).
    assert result.complete
    with TopicReader(kafka, topic) as reader:
        assert sum(tp.offset for tp in reader.end_offsets()) > 6


def test_an_empty_window_and_a_missing_topic(kafka: str, topics: dict[str, str]) -> None:
    topic = topics["xray.predictions"]
    old = now_ms() - 5 * HOUR_MS
    produce(make_producer(kafka), topic, [(prediction(1, "stable", old), old)])
    result = count_predictions(kafka, topic, window_s=3600, timeout_s=30)
    assert (result.counts, result.complete) == ({}, True)
    settings = NotebookSettings(kafka=kafka, topic_prefix=topics["prefix"])
    (row,) = cells(overview.section_prediction_counts(settings, window_s=3600), "chexstack-prediction-counts")
    assert row == ["no predictions in the last 1 hour"]

    with pytest.raises(TopicMissing, match="does not exist"):
        count_predictions(kafka, "no-such." + topic, window_s=3600, timeout_s=30)
    missing = NotebookSettings(kafka=kafka, topic_prefix="no-such.")
    markup = overview.section_prediction_counts(missing)
    assert 'class="chexstack-error"' in markup and "topic no-such.xray.predictions does not exist" in markup


# -------------------------------------------------------------------------------------------- hub


@pytest.fixture
def hub_api(tmp_path: Path, kafka: str, topics: dict[str, str]) -> Iterator[tuple[HubApi, str]]:
    """`chexstack hub serve` (token required) over a hub with one finished train job, a models.config
    labelling versions 1 and 2, and A/B weights on the control topic; serving is not running."""
    base = tmp_path / "models" / MODEL_NAME
    for v in (1, 2):
        (base / str(v)).mkdir(parents=True)
    config_file = tmp_path / "models.config"
    config_file.write_text(models_config(base, versions=(1, 2), labels={"stable": 1, "canary": 2}))
    with Hub.open(tmp_path / "hub.sqlite") as hub:
        job_id = hub.start_job("train", "default", "densenet", MODEL_NAME, {"config": {"epochs": 2}})
        results = {"mean_auroc": 0.7512, "run_dir": "/logs/chexnet-20261130T000000Z-7", "job_dir": "/jobs/x"}
        hub.finish_job(job_id, "succeeded", results, model_version=2)
    publish_weights(kafka, topics["chexstack.control"], MODEL_NAME, {"stable": 75, "canary": 25})
    api = HubApi(
        ["--hub", str(tmp_path / "hub.sqlite"), "--model-config-file", str(config_file), "--model-base-path",
         str(base), "--serving", f"127.0.0.1:{free_port()}", "--kafka", kafka, "--topic-prefix",
         topics["prefix"], "--hub-token", TOKEN, "--no-reruns"],
        tmp_path / "api.log",
    )  # fmt: skip
    api.start()
    try:
        yield api, job_id
    finally:
        api.stop()


def test_hub_sections_against_the_real_api(
    hub_api: tuple[HubApi, str], kafka: str, topics: dict[str, str]
) -> None:
    api, job_id = hub_api
    settings = NotebookSettings(kafka=kafka, topic_prefix=topics["prefix"], hub_url=api.url, hub_token=TOKEN,
                                tensorboard_url=TB)  # fmt: skip

    models = overview.section_models(settings)
    assert cells(models, "chexstack-models") == [
        [MODEL_NAME, "v1", overview.DASH, "stable", "yes", "yes", overview.DASH],
        [MODEL_NAME, "v2", overview.DASH, "canary", "yes", "yes", f"{job_id} (densenet)"],
    ]
    assert "Cannot read the serving state" in models  # serving is not running: said, not fatal

    ab = overview.section_ab(settings)
    assert cells(ab, "chexstack-ab") == [["stable", "75", "75.0 %"], ["canary", "25", "25.0 %"]]

    jobs = overview.section_jobs(settings)
    (row,) = cells(jobs, "chexstack-jobs")
    assert row[:3] == [job_id, "train", "succeeded"] and row[6:] == [
        "0.7512",
        "v2",
        "run chexnet-20261130T000000Z-7",
    ]
    (href,) = re.findall(r'<a href="([^"]*)"', jobs)
    link = urlsplit(html.unescape(href))
    assert parse_qs(link.query) == {"runFilter": ["^chexnet-20261130T000000Z-7$"]}
    assert f"{link.scheme}://{link.netloc}" == TB and link.fragment == "timeseries"

    whole = overview.overview_html(settings, window_s=600)
    for css_class in ("chexstack-models", "chexstack-ab", "chexstack-jobs", "chexstack-prediction-counts"):
        assert f'<table class="{css_class}">' in whole
    assert TOKEN not in models + ab + jobs + whole


def test_a_wrong_hub_token_is_named_and_never_shown(hub_api: tuple[HubApi, str]) -> None:
    api, _ = hub_api
    for token in ("wrong-token-123", None):
        settings = NotebookSettings(hub_url=api.url, hub_token=token)
        markup = overview.section_jobs(settings)
        assert 'class="chexstack-error"' in markup and "401" in markup and "CHEXSTACK_HUB_TOKEN" in markup
        assert "wrong-token-123" not in markup and TOKEN not in markup
