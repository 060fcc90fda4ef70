"""The models and training overview (notebooks/models_and_training.ipynb).

Four sections, each a fetch (the hub's HTTP API or Kafka) and a pure HTML rendering of what was
fetched, so the rendering is unit-testable without the platform:

- model versions, their serving state, their version labels (stable/canary) and the train job behind
  each (`render_models`, table class `chexstack-models`);
- the A/B weights (`render_ab`, `chexstack-ab`);
- recent jobs with a TensorBoard link for train jobs (`render_jobs`, `chexstack-jobs`);
- predictions per model version and variant over a recent window, counted from xray.predictions
  (`chexstack.predictions.count_predictions`, `render_prediction_counts`, `chexstack-prediction-counts`).

The `section_*` functions never raise: a hub or broker that cannot answer becomes a message in the
output that says what was unreachable and why (class `chexstack-error`), so one failing section does
not stop the notebook's later cells. The HTML comes from the Jinja2 templates in templates/overview
with autoescape on, so every value that comes from data is escaped; the hub token is never part of
any output.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any, Final
from urllib.parse import quote

from markupsafe import Markup

from chexstack.hub.client import HubClient, HubClientError
from chexstack.messages import format_ms
from chexstack.notebook.env import NotebookSettings
from chexstack.notebook.templating import DASH as DASH  # an absent value in every table
from chexstack.notebook.templating import render
from chexstack.predictions import PredictionCounts, count_predictions

log = logging.getLogger(__name__)
# librdkafka's own log lines (e.g. "Connect to ... failed") go to Python logging, not to the cell's
# stderr; a NullHandler keeps logging's last-resort handler from printing them.
_kafka_log = logging.getLogger(f"{__name__}.kafka")
_kafka_log.addHandler(logging.NullHandler())

DEFAULT_WINDOW_S: Final = 3600
DEFAULT_JOBS_LIMIT: Final = 15
HUB_TIMEOUT_S: Final = 15.0
KAFKA_TIMEOUT_S: Final = 30.0
MAX_ERROR_CHARS: Final = 600


def _section(body: str) -> str:
    """A section: the style sheet and `body`, which must be rendered markup already."""
    return render("overview/section.html.j2", body=Markup(body))


def redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


def render_error(what: str, where: str, reason: object, hint: str = "", secret: str | None = None) -> str:
    """`Cannot read <what> from <where>: <reason>` as one block; `secret` never shows."""
    text = redact(" ".join(str(reason).split()), secret)
    if len(text) > MAX_ERROR_CHARS:
        text = text[:MAX_ERROR_CHARS] + " ..."
    return render("overview/error.html.j2", what=what, where=where, reason=text, hint=redact(hint, secret))


def format_time(value: object) -> str | None:
    """An ISO 8601 time from the hub as `YYYY-MM-DD HH:MM:SS UTC` (anything else as it is); None when
    there is none."""
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def format_window(window_s: float) -> str:
    if window_s % 86400 == 0 and window_s >= 86400:
        n, unit = int(window_s // 86400), "day"
    elif window_s % 3600 == 0 and window_s >= 3600:
        n, unit = int(window_s // 3600), "hour"
    elif window_s % 60 == 0 and window_s >= 60:
        n, unit = int(window_s // 60), "minute"
    else:
        n, unit = int(window_s), "second"
    return f"{n} {unit}" + ("" if n == 1 else "s")


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return None if math.isnan(value) else float(value)


# ----------------------------------------------------------------------------------- the connection


def render_connection(settings: NotebookSettings, model_name: str | None = None) -> str:
    """Where the notebook reads from (the same CHEXSTACK_* settings as the services); never the token."""
    items = [
        ("model", model_name or settings.model_name),
        ("hub", settings.hub_url),
        ("hub token", "set" if settings.hub_token else "not set"),
        ("Kafka", settings.kafka),
        ("predictions topic", settings.topics.predictions),
        ("TensorBoard", settings.tensorboard_url),
    ]
    return _section(render("overview/connection.html.j2", items=items))


# ------------------------------------------------------------------------------------------ models


def render_models(models: list[dict[str, Any]]) -> str:
    """Per model and version: serving state, labels, on disk, in the version policy, the train job."""
    notes, rows = [], []
    for m in models:
        name = m.get("name")
        labels = m.get("labels") or {}
        serving_error = ""
        if m.get("serving_error"):
            serving_error = render_error(
                "the serving state",
                str(m.get("serving")),
                m["serving_error"],
                "versions and labels below come from models.config and the model base path",
            )
        notes.append(
            {
                "name": name,
                "label_text": ", ".join(f"{k} = v{v}" for k, v in sorted(labels.items())) or "no labels",
                "policy": m.get("policy"),
                "base": m.get("model_base"),
                "serving_error": Markup(serving_error),
            }
        )
        for v in m.get("versions") or []:
            in_policy = v.get("in_policy")
            rows.append(
                {
                    "name": name,
                    "version": v.get("version"),
                    "state": v.get("state") or None,
                    "labels": v.get("labels") or [],
                    "on_disk": "yes" if v.get("on_disk") else "missing",
                    "in_policy": None if in_policy is None else ("yes" if in_policy else "no"),
                    "job": v.get("train_job"),
                    "variation": v.get("variation"),
                }
            )
    headers = ["model", "version", "serving state", "labels", "on disk", "in policy", "train job"]
    return _section(render("overview/models.html.j2", models=notes, rows=rows, headers=headers))


def fetch_models(client: Any, model_name: str) -> list[dict[str, Any]]:
    return list(client.models(model_name))


# --------------------------------------------------------------------------------------------- A/B


def render_ab(model_name: str, weights: Mapping[str, int]) -> str:
    """Variant -> weight and share of traffic; no weights (or all zero) means the latest version."""
    total = sum(w for w in weights.values() if w > 0)
    rows = []
    if total > 0:
        rows = [(variant, weight, 100.0 * max(weight, 0) / total) for variant, weight in weights.items()]
    return _section(render("overview/ab.html.j2", model_name=model_name, rows=rows))


def fetch_ab(client: Any, model_name: str) -> dict[str, int]:
    return {str(k): int(v) for k, v in client.ab(model_name).items()}


# -------------------------------------------------------------------------------------------- jobs


def run_name(job: Mapping[str, Any]) -> str | None:
    """The TensorBoard run of a train job: `chexstack train` names it after the job directory and
    writes it under <logs_dir>/<run>; the hub keeps results.run_dir (and job_dir) once it finishes."""
    results = job.get("results") or {}
    config = (job.get("spec") or {}).get("config") or {}
    for value in (results.get("run_dir"), results.get("job_dir"), config.get("job_dir")):
        if isinstance(value, str) and value.strip():
            name = PurePosixPath(value.strip().rstrip("/")).name
            if name:
                return name
    return None


def _js_regex_escape(text: str) -> str:
    # TensorBoard compiles the run filter as a JavaScript RegExp; escape only its metacharacters
    # (Python's re.escape also escapes characters a unicode-mode RegExp rejects, e.g. "-").
    return "".join("\\" + c if c in r"\^$.|?*+()[]{}/" else c for c in text)


def tensorboard_link(tensorboard_url: str, run: str | None) -> str:
    """TensorBoard's time series dashboard, filtered to `run` (the `runFilter` query parameter TensorBoard
    2.x reads and writes for the run selector's regex); the dashboard root without a run."""
    base = tensorboard_url.rstrip("/") + "/"
    if not run:
        return base + "#timeseries"
    return f"{base}?runFilter={quote('^' + _js_regex_escape(run) + '$', safe='')}#timeseries"


def _serve_action(job: Mapping[str, Any]) -> str:
    """What a serve job did: `promote stable`, `A/B stable=90, canary=10` (`A/B latest` without weights)."""
    spec = job.get("spec") or {}
    action = spec.get("action")
    if action == "ab":
        weights = spec.get("weights") or {}
        return "A/B " + (", ".join(f"{k}={v}" for k, v in weights.items()) or "latest")
    return f"{action} {spec.get('label') or ''}".strip() if action else ""


def render_jobs(jobs: list[dict[str, Any]], tensorboard_url: str) -> str:
    """Newest first: id, kind, status, project / variation, times, mean AUROC, version, TensorBoard."""
    rows = []
    for job in jobs:
        kind = job.get("kind")
        auroc = _number((job.get("results") or {}).get("mean_auroc"))
        version = job.get("model_version")
        error = str(job["error"]) if job.get("error") else ""
        run = run_name(job) if kind == "train" else None
        rows.append(
            {
                "id": job.get("id"),
                "rerun_of": job.get("rerun_of"),
                "kind": kind,
                "what": _serve_action(job) if kind == "serve" else "",
                "status": job.get("status"),
                "error": error,
                "error_short": error if len(error) <= 200 else error[:200] + " ...",
                "project": job.get("project"),
                "variation": job.get("variation"),
                "created": format_time(job.get("created_at")),
                "finished": format_time(job.get("finished_at")),
                "auroc": None if auroc is None else f"{auroc:.4f}",
                "version": None if version is None else f"v{version}",
                "tensorboard": tensorboard_link(tensorboard_url, run) if kind == "train" else None,
                "run": run,
            }
        )
    headers = ["job", "kind", "status", "project / variation", "created", "finished", "mean AUROC",
               "model version", "TensorBoard"]  # fmt: skip
    return _section(render("overview/jobs.html.j2", jobs=rows, headers=headers))


def fetch_jobs(client: Any, kind: str | None = None, limit: int = DEFAULT_JOBS_LIMIT) -> list[dict[str, Any]]:
    return list(client.jobs(kind=kind, limit=limit))


# ------------------------------------------------------------------------------------- predictions


def render_prediction_counts(result: PredictionCounts, model_name: str | None = None) -> str:
    """Per model, version and variant: the number of predictions and its share of the model's."""
    per_model: dict[str, int] = {}
    for (name, _, _), n in result.counts.items():
        per_model[name] = per_model.get(name, 0) + n
    rows = [
        {
            "name": name,
            "marked": bool(model_name) and name == model_name,
            "version": version,
            "variant": variant,
            "count": n,
            "share": 100.0 * n / per_model[name] if per_model[name] else 0.0,
        }
        for (name, version, variant), n in sorted(result.counts.items())
    ]
    return _section(
        render(
            "overview/prediction_counts.html.j2",
            total=result.total,
            topic=result.topic,
            window=format_window((result.until_ms - result.since_ms) / 1000),
            since=format_ms(result.since_ms),
            until=format_ms(result.until_ms),
            rows=rows,
            headers=["model", "version", "variant", "predictions", "share of the model's"],
            marked_model=model_name if model_name and model_name in per_model else None,
            complete=result.complete,
            undecodable=result.undecodable,
        )
    )


# ----------------------------------------------------------------------- sections (never raise)


def _client(settings: NotebookSettings) -> HubClient:
    # An explicit token ("" when unset) so the client does not pick one up from elsewhere.
    return HubClient(settings.hub_url, token=settings.hub_token or "", timeout_s=HUB_TIMEOUT_S)


def _hub_hint(exc: Exception) -> str:
    status = getattr(exc, "status", None)
    if status == 0:
        return "Is the hub service running, and is CHEXSTACK_HUB_URL right?"
    if status == 401:
        return "The hub wants a bearer token: CHEXSTACK_HUB_TOKEN is missing or wrong."
    if status == 503:
        return "The hub could not reach Kafka or serving."
    return ""


def hub_reason(exc: Exception) -> str:
    """The gist of a hub failure: requests' connection errors nest the cause (e.g. `[Errno 111] Connection
    refused`) deep in a long repr; other errors say it themselves."""
    text = str(exc) if isinstance(exc, HubClientError) else f"{type(exc).__name__}: {exc}"
    if getattr(exc, "status", None) == 0:
        for pattern in (r"\[Errno -?\d+\][^'\"()]*", r"[Rr]ead timed out[^'\"()]*"):
            found = re.search(pattern, text)
            if found:
                return f"no answer ({found.group(0).strip().rstrip('.')})"
    return text


def _hub_section(settings: NotebookSettings, what: str, build: Callable[[HubClient], str]) -> str:
    try:
        client = _client(settings)
        try:
            return build(client)
        finally:
            client.close()
    except Exception as exc:  # shown, never raised: the notebook's other cells must still run
        log.debug("reading %s from %s failed", what, settings.hub_url, exc_info=True)
        where = f"the hub at {settings.hub_url}"
        return _section(render_error(what, where, hub_reason(exc), _hub_hint(exc), settings.hub_token))


def section_models(settings: NotebookSettings, model_name: str | None = None) -> str:
    name = model_name or settings.model_name
    return _hub_section(settings, f"the versions of {name}", lambda c: render_models(fetch_models(c, name)))


def section_ab(settings: NotebookSettings, model_name: str | None = None) -> str:
    name = model_name or settings.model_name
    return _hub_section(settings, f"the A/B weights of {name}", lambda c: render_ab(name, fetch_ab(c, name)))


def section_jobs(settings: NotebookSettings, kind: str | None = None, limit: int = DEFAULT_JOBS_LIMIT) -> str:
    return _hub_section(
        settings,
        "the recent jobs",
        lambda c: render_jobs(fetch_jobs(c, kind, limit), settings.tensorboard_url),
    )


def section_prediction_counts(
    settings: NotebookSettings,
    window_s: float = DEFAULT_WINDOW_S,
    model_name: str | None = None,
    timeout_s: float = KAFKA_TIMEOUT_S,
) -> str:
    topic = settings.topics.predictions
    try:
        result = count_predictions(
            settings.kafka, topic, window_s=window_s, timeout_s=timeout_s, logger=_kafka_log
        )
    except Exception as exc:  # shown, never raised
        log.debug("counting predictions in %s failed", topic, exc_info=True)
        hint = "Is Kafka running, and are CHEXSTACK_KAFKA and CHEXSTACK_TOPIC_PREFIX right?"
        reason = str(exc) if isinstance(exc, RuntimeError) else f"{type(exc).__name__}: {exc}"
        what, where = f"the predictions ({topic})", f"Kafka at {settings.kafka}"
        return _section(render_error(what, where, reason, hint, settings.hub_token))
    return render_prediction_counts(result, model_name or settings.model_name)


# ------------------------------------------------------------------------------ display (notebook)


def _display(markup: str) -> None:
    from IPython.display import HTML, display

    display(HTML(markup))


def show_connection(settings: NotebookSettings | None = None, model_name: str | None = None) -> None:
    _display(render_connection(settings or NotebookSettings.from_env(), model_name))


def show_models(settings: NotebookSettings | None = None, model_name: str | None = None) -> None:
    _display(section_models(settings or NotebookSettings.from_env(), model_name))


def show_ab(settings: NotebookSettings | None = None, model_name: str | None = None) -> None:
    _display(section_ab(settings or NotebookSettings.from_env(), model_name))


def show_jobs(
    settings: NotebookSettings | None = None, kind: str | None = None, limit: int = DEFAULT_JOBS_LIMIT
) -> None:
    _display(section_jobs(settings or NotebookSettings.from_env(), kind, limit))


def show_prediction_counts(
    settings: NotebookSettings | None = None,
    window_s: float = DEFAULT_WINDOW_S,
    model_name: str | None = None,
) -> None:
    _display(section_prediction_counts(settings or NotebookSettings.from_env(), window_s, model_name))


def overview_html(
    settings: NotebookSettings, model_name: str | None = None, window_s: float = DEFAULT_WINDOW_S
) -> str:
    """All four sections with headers, each failing on its own."""
    parts = [
        ("Model versions and labels", section_models(settings, model_name)),
        ("A/B weights", section_ab(settings, model_name)),
        ("Recent jobs", section_jobs(settings)),
        ("Predictions per variant", section_prediction_counts(settings, window_s, model_name)),
    ]
    return render("overview/overview.html.j2", parts=[(title, Markup(body)) for title, body in parts])


def show_overview(
    settings: NotebookSettings | None = None,
    model_name: str | None = None,
    window_s: float = DEFAULT_WINDOW_S,
) -> None:
    _display(overview_html(settings or NotebookSettings.from_env(), model_name, window_s))
