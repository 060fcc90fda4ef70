"""The models and training overview: its pure HTML rendering, its error sections and the notebook file."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from markupsafe import escape

from chexstack.hub.client import HubClientError
from chexstack.notebook import overview
from chexstack.notebook.env import NotebookSettings
from chexstack.predictions import PredictionCounts
from tests.conftest import free_port

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "models_and_training.ipynb"
EVIL = '<script>alert("x")</script>&'
ESCAPED = str(escape(EVIL))  # as the templates' autoescape writes it (quotes too)
TB = "http://tb.example:6006"


def hrefs(markup: str) -> list[str]:
    return [html.unescape(h) for h in re.findall(r'<a href="([^"]*)"', markup)]


def rows(markup: str, css_class: str) -> list[str]:
    table = re.search(rf'<table class="{css_class}">(.*?)</table>', markup, re.S)
    assert table is not None, markup
    return re.findall(r"<tr>(.*?)</tr>", table.group(1).split("<tbody>", 1)[1], re.S)


def cells(row: str) -> list[str]:
    """Each cell's text, tags removed and white space collapsed."""
    return [
        " ".join(re.sub(r"<[^>]+>", " ", c).split()) for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
    ]


def model(**overrides: Any) -> dict[str, Any]:
    info: dict[str, Any] = {
        "name": "chexnet",
        "model_base": "/models/chexnet",
        "policy": "specific: 1, 2",
        "labels": {"stable": 1, "canary": 2},
        "versions": [
            {"version": 1, "on_disk": True, "state": "AVAILABLE", "labels": ["stable"], "in_policy": True,
             "train_job": "a1b2c3d4e5f6", "variation": "densenet"},
            {"version": 2, "on_disk": True, "state": "AVAILABLE", "labels": ["canary"], "in_policy": True,
             "train_job": None, "variation": None},
            {"version": 3, "on_disk": False, "state": None, "labels": [], "in_policy": False,
             "train_job": None, "variation": None},
        ],
        "serving": "serving:8500",
        "serving_error": None,
    }  # fmt: skip
    info.update(overrides)
    return info


def train_job(**overrides: Any) -> dict[str, Any]:
    job: dict[str, Any] = {
        "id": "0123456789abcdef",
        "kind": "train",
        "status": "succeeded",
        "project": "default",
        "variation": "densenet",
        "model_name": "chexnet",
        "model_version": 2,
        "spec": {"config": {"job_dir": None, "epochs": 4}, "dataset": {"checksum": "abc"}},
        "results": {"mean_auroc": 0.81234, "run_dir": "/logs/chexnet-20261130T000102Z-42", "job_dir": "/j/x"},
        "error": None,
        "rerun_of": None,
        "created_at": "2026-11-30T00:01:02.123Z",
        "started_at": "2026-11-30T00:01:03.000Z",
        "finished_at": "2026-11-30T00:20:00.000Z",
    }
    job.update(overrides)
    return job


# ------------------------------------------------------------------------------------------ models


def test_models_table_lists_versions_states_labels_and_jobs() -> None:
    markup = overview.render_models([model()])
    got = [cells(r) for r in rows(markup, "chexstack-models")]
    assert got == [
        ["chexnet", "v1", "AVAILABLE", "stable", "yes", "yes", "a1b2c3d4e5f6 (densenet)"],
        ["chexnet", "v2", "AVAILABLE", "canary", "yes", "yes", overview.DASH],
        ["chexnet", "v3", overview.DASH, overview.DASH, "missing", "no", overview.DASH],
    ]
    assert '<span class="chexstack-label chexstack-label-stable">stable</span>' in markup
    assert '<span class="chexstack-label chexstack-label-canary">canary</span>' in markup
    assert "canary = v2, stable = v1" in markup
    assert 'class="chexstack-error"' not in markup


def test_models_serving_error_and_empty_state() -> None:
    markup = overview.render_models([model(versions=[], labels={}, serving_error="connect failed")])
    assert 'class="chexstack-error"' in markup and "connect failed" in markup and "serving:8500" in markup
    (row,) = rows(markup, "chexstack-models")
    assert "no model versions" in row
    assert "no labels" in markup
    assert 'class="chexstack-models"' in overview.render_models([])


def test_models_escape_everything_from_data() -> None:
    version = {"version": EVIL, "on_disk": True, "state": EVIL, "labels": [EVIL], "in_policy": None,
               "train_job": EVIL, "variation": EVIL}  # fmt: skip
    evil = model(name=EVIL, policy=EVIL, model_base=EVIL, labels={EVIL: 1}, versions=[version],
                 serving_error=EVIL, serving=EVIL)  # fmt: skip
    markup = overview.render_models([evil])
    assert "<script>" not in markup and 'alert("x")' not in markup
    assert markup.count(ESCAPED) >= 8


# --------------------------------------------------------------------------------------------- A/B


def test_ab_weights_and_shares() -> None:
    markup = overview.render_ab("chexnet", {"stable": 90, "canary": 10})
    assert [cells(r) for r in rows(markup, "chexstack-ab")] == [
        ["stable", "90", "90.0 %"],
        ["canary", "10", "10.0 %"],
    ]
    thirds = overview.render_ab("chexnet", {"a": 1, "b": 2, "off": 0})
    assert [cells(r) for r in rows(thirds, "chexstack-ab")] == [
        ["a", "1", "33.3 %"],
        ["b", "2", "66.7 %"],
        ["off", "0", "0.0 %"],
    ]


@pytest.mark.parametrize("weights", [{}, {"stable": 0, "canary": 0}])
def test_ab_without_weights_is_all_traffic_to_the_latest_version(weights: dict[str, int]) -> None:
    markup = overview.render_ab("chexnet", weights)
    (row,) = rows(markup, "chexstack-ab")
    assert "all traffic to the latest version" in row


def test_ab_escapes() -> None:
    markup = overview.render_ab(EVIL, {EVIL: 5})
    assert "<script>" not in markup and markup.count(ESCAPED) == 2


# -------------------------------------------------------------------------------------------- jobs


def test_jobs_table_with_tensorboard_link_for_train_jobs() -> None:
    serve = train_job(
        id="fedcba9876543210", kind="serve", model_version=2, results={"label": "stable", "version": 2},
        spec={"action": "promote", "label": "stable", "version": 2}, finished_at=None,
    )  # fmt: skip
    ab = train_job(
        id="ab", kind="serve", model_version=None, results={}, spec={"action": "ab", "weights": {}}
    )
    markup = overview.render_jobs([train_job(), serve, ab], TB + "/")
    got = [cells(r) for r in rows(markup, "chexstack-jobs")]
    assert got[0] == [
        "0123456789abcdef", "train", "succeeded", "default / densenet", "2026-11-30 00:01:02 UTC",
        "2026-11-30 00:20:00 UTC", "0.8123", "v2", "run chexnet-20261130T000102Z-42",
    ]  # fmt: skip
    assert got[1] == [
        "fedcba9876543210", "serve promote stable", "succeeded", "default / densenet",
        "2026-11-30 00:01:02 UTC", overview.DASH, overview.DASH, "v2", overview.DASH,
    ]  # fmt: skip
    assert got[2][1] == "serve A/B latest"
    (link,) = hrefs(markup)
    url = urlsplit(link)
    assert (url.scheme, url.netloc, url.path, url.fragment) == ("http", "tb.example:6006", "/", "timeseries")
    assert parse_qs(url.query) == {"runFilter": ["^chexnet-20261130T000102Z-42$"]}
    assert 'target="_blank"' in markup


def test_run_name_falls_back_to_the_job_dir_and_then_to_the_tensorboard_root() -> None:
    assert overview.run_name(train_job(results={"job_dir": "/jobs/run-7/"})) == "run-7"
    running = train_job(status="running", results={}, spec={"config": {"job_dir": "/data/job-a"}})
    assert overview.run_name(running) == "job-a"
    unknown = train_job(status="running", results={}, spec={"config": {"job_dir": None}})
    assert overview.run_name(unknown) is None
    assert hrefs(overview.render_jobs([unknown], TB)) == [TB + "/#timeseries"]
    assert overview.tensorboard_link(TB, "a.b(c)") == TB + "/?runFilter=%5Ea%5C.b%5C%28c%5C%29%24#timeseries"


def test_jobs_error_rerun_and_empty_state() -> None:
    failed = train_job(status="failed", error="TrainError: " + "x" * 300, rerun_of="0123456789abcdef",
                       results={}, model_version=None, finished_at="not a time")  # fmt: skip
    markup = overview.render_jobs([failed], TB)
    (row,) = rows(markup, "chexstack-jobs")
    assert "rerun of 0123456789abcdef" in row and "TrainError: xxx" in row and " ..." in row
    assert "not a time" in row
    (empty,) = rows(overview.render_jobs([], TB), "chexstack-jobs")
    assert "no jobs recorded yet" in empty


def test_jobs_escape_everything_from_data() -> None:
    results = {"mean_auroc": EVIL, "run_dir": "/l/" + EVIL}
    evil = train_job(id=EVIL, kind="train", status=EVIL, project=EVIL, variation=EVIL, error=EVIL,
                     rerun_of=EVIL, created_at=EVIL, results=results)  # fmt: skip
    markup = overview.render_jobs([evil], TB)
    assert "<script>" not in markup and 'alert("x")' not in markup
    (link,) = hrefs(markup)
    assert "<" not in link and '"' not in link  # the run name is percent-encoded in the link


# ------------------------------------------------------------------------------------- predictions


def test_prediction_counts_table_with_shares_and_notes() -> None:
    result = PredictionCounts(
        topic="t.xray.predictions",
        since_ms=1_780_000_000_000,
        until_ms=1_780_000_000_000 + 3_600_000,
        counts={("chexnet", 2, "canary"): 1, ("chexnet", 1, "stable"): 3, ("other", 5, "latest"): 2},
        undecodable=1,
        complete=False,
    )
    markup = overview.render_prediction_counts(result, "chexnet")
    assert [cells(r) for r in rows(markup, "chexstack-prediction-counts")] == [
        ["chexnet *", "v1", "stable", "3", "75.0 %"],
        ["chexnet *", "v2", "canary", "1", "25.0 %"],
        ["other", "v5", "latest", "2", "100.0 %"],
    ]
    assert "6 predictions in <code>t.xray.predictions</code> in the last 1 hour" in markup
    assert "lower bound" in markup and "1 message(s) were not predictions" in markup
    assert "the model this notebook shows (chexnet)" in markup
    assert "the model this notebook shows" not in overview.render_prediction_counts(result, "absent")


def test_prediction_counts_empty_state_and_escaping() -> None:
    empty = PredictionCounts(topic=EVIL, since_ms=0, until_ms=90_000)
    markup = overview.render_prediction_counts(empty)
    (row,) = rows(markup, "chexstack-prediction-counts")
    assert "no predictions in the last 90 seconds" in row
    assert "<script>" not in markup and ESCAPED in markup
    counted = PredictionCounts(topic="t", since_ms=0, until_ms=1, counts={(EVIL, 1, EVIL): 1})
    assert "<script>" not in overview.render_prediction_counts(counted, EVIL)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(3600, "1 hour"), (7200, "2 hours"), (900, "15 minutes"), (86400, "1 day"), (45, "45 seconds")],
)
def test_format_window(seconds: float, text: str) -> None:
    assert overview.format_window(seconds) == text


# ------------------------------------------------------------------------- sections never raise


def unreachable(token: str | None = "hub-s3cret") -> NotebookSettings:
    port = free_port()  # nothing listens there: refused at once
    return NotebookSettings(hub_url=f"http://127.0.0.1:{port}", hub_token=token, kafka=f"127.0.0.1:{port}",
                            topic_prefix="p.", tensorboard_url=TB)  # fmt: skip


@pytest.mark.parametrize("section", ["section_models", "section_ab", "section_jobs"])
def test_an_unreachable_hub_is_a_message_naming_it_never_the_token(section: str) -> None:
    settings = unreachable()
    markup = getattr(overview, section)(settings)
    assert 'class="chexstack-error"' in markup
    assert f"from the hub at {settings.hub_url}</b>" in markup
    assert "Connection refused" in markup and "CHEXSTACK_HUB_URL" in markup
    assert "hub-s3cret" not in markup and "Traceback" not in markup


def test_unreachable_kafka_is_a_message_naming_it() -> None:
    settings = unreachable()
    markup = overview.section_prediction_counts(settings, timeout_s=3)
    assert 'class="chexstack-error"' in markup
    assert f"Cannot read the predictions (p.xray.predictions) from Kafka at {settings.kafka}</b>" in markup
    assert "CHEXSTACK_KAFKA" in markup and "hub-s3cret" not in markup


def test_hub_reason_keeps_the_gist_of_connection_failures() -> None:
    refused = HubClientError(
        "GET http://hub:8600/v1/jobs: HTTPConnectionPool(host='hub', port=8600): Max retries exceeded "
        "with url: /v1/jobs (Caused by NewConnectionError(\"HTTPConnection(host='hub', port=8600): Failed "
        'to establish a new connection: [Errno 111] Connection refused"))',
        0,
    )
    assert overview.hub_reason(refused) == "no answer ([Errno 111] Connection refused)"
    slow = HubClientError(
        "GET http://hub:8600/v1/jobs: HTTPConnectionPool(...): Read timed out. (read timeout=15)", 0
    )
    assert overview.hub_reason(slow) == "no answer (Read timed out)"
    denied = HubClientError("GET /v1/jobs: 401 missing or wrong bearer token", 401)
    assert overview.hub_reason(denied) == "GET /v1/jobs: 401 missing or wrong bearer token"
    assert overview.hub_reason(ValueError("bad JSON")) == "ValueError: bad JSON"


def test_render_error_redacts_the_secret_and_shortens() -> None:
    markup = overview.render_error("x", "y", "token tok-123 and " + "z" * 2000, "use tok-123", "tok-123")
    assert "tok-123" not in markup and "***" in markup and " ..." in markup
    assert len(markup) < 1000


def test_overview_shows_every_section_even_when_all_fail() -> None:
    markup = overview.overview_html(unreachable(), "chexnet", 60)
    assert markup.count('class="chexstack-error"') == 4
    for title in ("Model versions and labels", "A/B weights", "Recent jobs", "Predictions per variant"):
        assert f"<h3>{title}</h3>" in markup


def test_connection_summary_never_shows_the_token() -> None:
    markup = overview.render_connection(unreachable(), None)
    assert "hub-s3cret" not in markup and ">set<" in markup and "p.xray.predictions" in markup
    assert ">not set<" in overview.render_connection(unreachable(token=None), "m")


# ---------------------------------------------------------------------------------------- notebook


def test_the_notebook_is_nbformat_4_with_parameters_and_no_outputs() -> None:
    nb = json.loads(NOTEBOOK.read_text())
    assert (nb["nbformat"], nb["metadata"]["kernelspec"]["name"]) == (4, "python3")
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in code)
    tagged = [c for c in code if "parameters" in c["metadata"].get("tags", [])]
    assert len(tagged) == 1 and tagged[0] is code[0]
    parameters = "".join(tagged[0]["source"])
    assert "MODEL_NAME: str | None = None" in parameters and "PREDICTION_WINDOW_S = 3600" in parameters
    namespace: dict[str, Any] = {}
    exec(parameters, namespace)
    assert {k: v for k, v in namespace.items() if not k.startswith("__")} == {
        "MODEL_NAME": None,
        "PREDICTION_WINDOW_S": 3600,
    }
    source = "\n".join("".join(c["source"]) for c in code)
    for name in ("show_models", "show_ab", "show_jobs", "show_prediction_counts"):
        assert f"overview.{name}(" in source and callable(getattr(overview, name))
    for c in code:
        compile("".join(c["source"]), "cell", "exec")
    assert nb["cells"][0]["cell_type"] == "markdown"
    last = "".join(nb["cells"][-1]["source"])
    assert all(
        cmd in last for cmd in ("chexstack models promote", "chexstack ab set", "chexstack jobs rerun")
    )
    assert len({c["id"] for c in nb["cells"]}) == len(nb["cells"])


def test_the_notebook_cells_run_without_a_platform() -> None:
    """Executed in order (as nbclient would, display() being IPython's): no cell raises."""
    nb = json.loads(NOTEBOOK.read_text())
    settings = unreachable()
    env = {"CHEXSTACK_HUB_URL": settings.hub_url, "CHEXSTACK_KAFKA": settings.kafka,
           "CHEXSTACK_HUB_TOKEN": "hub-s3cret"}  # fmt: skip
    shown: list[str] = []
    namespace: dict[str, Any] = {}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        mp.setattr(overview, "_display", shown.append)
        for c in nb["cells"]:
            if c["cell_type"] == "code":
                source = "".join(c["source"])
                if "parameters" in c["metadata"].get("tags", []):
                    source += "\nPREDICTION_WINDOW_S = 60\n"
                exec(compile(source, "cell", "exec"), namespace)
    assert len(shown) == 5
    assert all('class="chexstack-error"' in s for s in shown[1:])
    assert not any("hub-s3cret" in s for s in shown)
