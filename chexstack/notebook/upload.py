"""The notebook's upload panel: pick radiographs, watch each one flow, read the result cards.

Files go through the code path of `chexstack upload` (validation, de-identification, content-addressed
store, xray.uploaded): on the platform through the ingest service (`IngestClient`), which holds the
pseudonym key the notebooks never see; elsewhere in the kernel (`Uploader`). A background thread per
batch then follows it through xray.preprocessed, xray.predictions and xray.dlq (chexstack.notebook.tracker)
and updates each file's status and card as the messages arrive, so the kernel stays free meanwhile.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from chexstack import transform
from chexstack.ingest.uploader import IngestResult, UnreadableFile, UploadTarget, UploadUnavailable
from chexstack.messages import Prediction
from chexstack.notebook import cards
from chexstack.notebook.env import NotebookSettings
from chexstack.notebook.templating import render
from chexstack.notebook.tracker import Event, Tracker, TrackerError
from chexstack.settings import Limits

ACCEPT = ".png,.jpg,.jpeg,.dcm,.dicom"
FINAL = frozenset({"predicted", "rejected", "timeout"})
# A file to upload: picked in the browser (its bytes) or on the server's disk (read by the uploader,
# with the checks of `chexstack upload`).
Source = bytes | Path


@dataclass(eq=False)  # compared by identity: the same image may be picked twice in one batch
class FileState:
    name: str
    status: str = "uploading"
    detail: str = ""
    image_id: str | None = None
    pixels: np.ndarray | None = None
    prediction: Prediction | None = None
    explanation: cards.Explanation | None = None
    data: bytes | None = field(default=None, repr=False)  # kept only until the pixels are known


class UploadPanel:
    """`UploadPanel.from_env()` in a notebook cell; display it as the cell's value."""

    def __init__(self, settings: NotebookSettings, threshold: float = 0.5, wait_s: float = 300.0) -> None:
        import ipywidgets as w

        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
        self.settings = settings
        self.wait_s = wait_s
        self._lock = threading.RLock()
        self._files: list[FileState] = []
        self._threads: list[threading.Thread] = []
        self._uploader: UploadTarget | None = None
        self._card_widgets: dict[int, Any] = {}  # id(FileState) -> its HTML widget
        self._card_cache: dict[int, tuple[tuple[object, ...], str]] = {}
        self._tracker = Tracker(settings.kafka, settings.topics)

        self.picker = w.FileUpload(
            accept=ACCEPT, multiple=True, description="Upload X-rays", layout=w.Layout(width="auto")
        )
        self.patient = w.Text(
            placeholder="optional: applies to this batch, pseudonymised",
            description="Patient ID",
            layout=w.Layout(width="420px"),
        )
        self.threshold = w.FloatSlider(
            value=threshold,
            min=0.0,
            max=1.0,
            step=0.05,
            description="Threshold",
            readout_format=".2f",
            continuous_update=False,  # re-render the cards once the slider is let go
        )
        self.message = w.HTML()
        self.batches = w.VBox()
        self.statuses = w.HTML(cards.status_table_html([]))
        self.cards = w.VBox()
        self.widget = w.VBox(
            [
                w.HTML(
                    cards.STYLE + "<b>PNG, JPEG or DICOM</b>: several files at once. Originals are "
                    "de-identified before they are stored; results appear below as they arrive."
                ),
                w.HBox([self.picker, self.patient]),
                self.threshold,
                self.message,
                self.batches,
                self.statuses,
                self.cards,
            ]
        )
        self.widget.add_class("chexstack-upload")
        self.picker.observe(self._on_pick, names="value")
        self.threshold.observe(lambda _change: self._render(), names="value")

    @classmethod
    def from_env(cls, threshold: float = 0.5, wait_s: float = 300.0) -> UploadPanel:
        return cls(NotebookSettings.from_env(), threshold=threshold, wait_s=wait_s)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    # Uploading ---------------------------------------------------------------------------------

    def _on_pick(self, change: dict[str, Any]) -> None:
        picked = change["new"]
        if not picked:
            return
        items: list[tuple[str, Source]] = [(str(f["name"]), bytes(f["content"])) for f in picked]
        # Clear the widget (its value holds every byte) so the same files can be picked again, and the
        # patient ID, which applies to this batch only.
        self.picker.value = ()
        patient_id = self.patient.value
        self.patient.value = ""
        self._upload(items, patient_id)

    def upload_paths(self, paths: Iterable[str | Path], patient_id: str | None = None) -> None:
        """Upload files from the server's disk (what the widget does with picked files)."""
        self._upload([(Path(p).name, Path(p)) for p in paths], patient_id)

    def _get_uploader(self) -> UploadTarget:
        if self._uploader is None:
            uploader = self._open_uploader()
            try:
                uploader.check_connection()
            except BaseException:
                uploader.close()
                raise
            self._uploader = uploader
        return self._uploader

    def _open_uploader(self) -> UploadTarget:
        """The ingest service when the settings name one (the platform), else this kernel."""
        s = self.settings
        if s.ingest_url:
            from chexstack.ingest.client import IngestClient

            return IngestClient(s.ingest_url, s.ingest_token or "", limits=s.limits)
        from chexstack.ingest.uploader import open_uploader

        return open_uploader(s.kafka, s.store, None, s.limits, s.topics)

    def _upload(self, items: Sequence[tuple[str, Source]], patient_id: str | None) -> None:
        import ipywidgets as w

        batch = len(self.batches.children) + 1
        bar = w.IntProgress(value=0, min=0, max=2 * len(items), description=f"Batch {batch}")
        label = w.Label()
        self.batches.children = (*self.batches.children, w.HBox([bar, label]))
        states = [FileState(name) for name, _ in items]
        with self._lock:
            self._files.extend(states)
        self._render()
        try:
            uploader = self._get_uploader()
            start = self._tracker.positions()
        except (UploadUnavailable, TrackerError, OSError, ValueError) as exc:
            self.message.value = _problem(f"Cannot upload: {exc}")
            with self._lock:
                for s in states:
                    s.status, s.detail = "rejected", f"not uploaded: {exc}"
            self._render()
            bar.value = bar.max
            return
        self.message.value = ""
        duplicates: list[FileState] = []
        try:
            for state, (_, source) in zip(states, items, strict=True):
                self._upload_one(uploader, state, source, patient_id, duplicates, bar)
                label.value = _batch_text(states)
                self._render()
        finally:
            # Whatever was uploaded is followed, even when a later file broke the loop.
            with self._lock:
                for state in states:
                    if state.status == "uploading":
                        state.status, state.detail = "rejected", "not uploaded: the batch stopped early"
                        bar.value = min(bar.max, bar.value + 2)
            thread = threading.Thread(
                target=self._follow,
                args=(states, duplicates, start, bar, label),
                name=f"chexstack-batch-{batch}",
                daemon=True,
            )
            with self._lock:
                self._threads.append(thread)
            thread.start()

    def _upload_one(
        self,
        uploader: UploadTarget,
        state: FileState,
        source: Source,
        patient_id: str | None,
        duplicates: list[FileState],
        bar: Any,
    ) -> None:
        try:
            data = source if isinstance(source, bytes) else uploader.read_path(source)
            result = uploader.upload_bytes(data, state.name, patient_id or None)
        except UnreadableFile as exc:
            data, result = b"", IngestResult(state.name, None, str(exc))
        except UploadUnavailable as exc:  # the ingest service went away or refused the token
            data, result = b"", IngestResult(state.name, None, f"not uploaded: {exc}")
        except OSError as exc:  # the blob store (disk full, permissions): its message names the path
            data, result = b"", IngestResult(state.name, None, f"upload failed: {exc}")
        except Exception as exc:  # one file's failure must not stop the batch
            # Only the type: a decoder's message may quote header values, i.e. patient data.
            data, result = b"", IngestResult(state.name, None, f"upload failed ({type(exc).__name__})")
        with self._lock:
            if result.reason is not None:
                state.status, state.detail = "rejected", result.reason
                bar.value = min(bar.max, bar.value + 2)
            else:
                state.image_id = result.image_id
                state.status = "uploaded"
                state.detail = "already uploaded: looking up its prediction" if result.duplicate else ""
                state.data = data
                bar.value = min(bar.max, bar.value + 1)
                if result.duplicate:
                    duplicates.append(state)

    # Following ---------------------------------------------------------------------------------

    def _follow(
        self, states: list[FileState], duplicates: list[FileState], start: Any, bar: Any, label: Any
    ) -> None:
        """Runs in the batch's thread: every file ends predicted, rejected or timed out, whatever fails."""
        by_id: dict[str, list[FileState]] = {}
        for s in states:
            if s.image_id is not None and s.status not in FINAL:
                by_id.setdefault(s.image_id, []).append(s)
        # Followed through the topics unless every file of the image was a re-upload (then only its
        # earlier prediction exists); the same new image picked twice is followed once, for both.
        fresh = {i for i, group in by_id.items() if not all(s in duplicates for s in group)}
        reuploaded = set(by_id) - fresh

        def on_event(event: Event) -> None:
            for s in by_id.get(event.image_id, []):
                before = s.status
                try:
                    self._apply(s, event)
                except Exception as exc:  # one bad card must not end the batch
                    with self._lock:
                        if event.kind != "preprocessed":
                            s.status = "predicted" if event.kind == "predicted" else "rejected"
                            s.prediction = event.prediction or s.prediction
                            s.detail = f"{s.detail} (cannot show it: {type(exc).__name__})".strip()
                if before not in FINAL and s.status in FINAL:
                    bar.value = min(bar.max, bar.value + 1)
            label.value = _batch_text(states)
            self._render()

        why = (
            f"no prediction within {self.wait_s:.0f} s: are the workers and serving running? "
            "(`docker compose ps` in the workers and serving projects)"
        )
        try:
            left = self._tracker.follow(fresh, start, on_event, timeout_s=self.wait_s)
            left |= self._lookup_duplicates(reuploaded, on_event)
        except Exception as exc:  # the thread must leave no file unfinished
            left = set(by_id)
            why = (
                f"tracking stopped: {exc}"
                if isinstance(exc, TrackerError)
                else (f"tracking stopped ({type(exc).__name__}: {exc})")
            )
            self.message.value = _problem(why)
        with self._lock:
            for image_id in left:
                for s in by_id.get(image_id, []):
                    if s.status not in FINAL:
                        s.status, s.detail = "timeout", why
                        bar.value = min(bar.max, bar.value + 1)
            for s in states:
                s.data = None  # the original bytes are not kept once the file is finished
        label.value = _batch_text(states)
        self._render()

    def _lookup_duplicates(self, image_ids: set[str], on_event: Callable[[Event], None]) -> set[str]:
        """A re-uploaded image is not processed again: its earlier prediction is on the topic."""
        if not image_ids:
            return set()
        from chexstack.predictions import read_predictions

        found: set[str] = set()
        for pred in read_predictions(
            self.settings.kafka,
            self.settings.topics.predictions,
            image_ids=image_ids,
            timeout_s=min(60.0, self.wait_s),
        ):
            if pred.image_id not in found:
                found.add(pred.image_id)
                on_event(Event("predicted", pred.image_id, prediction=pred))
        return image_ids - found

    def _apply(self, state: FileState, event: Event) -> None:
        if state.status in FINAL:
            return
        if event.kind == "preprocessed" and event.preprocessed is not None:
            pixels = event.preprocessed.pixels()
            with self._lock:
                state.pixels = pixels
                state.status = "preprocessed"
                state.detail = f"{event.preprocessed.preprocess_ms:.0f} ms"
        elif event.kind == "predicted" and event.prediction is not None:
            pred = event.prediction
            shown = state.pixels
            if shown is None:
                shown = _local_pixels(state.data, self.settings.limits)
            with self._lock:
                state.pixels = shown
                state.prediction = pred
                state.status = "predicted"
                state.detail = (
                    f"{pred.model_name} v{pred.model_version} ({pred.variant}), "
                    f"{pred.latency.end_to_end_ms:.0f} ms"
                )
                state.data = None
            if shown is not None:
                self._render()  # the card now; its class activation map follows
                explanation = self._explain(pred, shown)
                with self._lock:
                    state.explanation = explanation
        elif event.kind == "rejected":
            with self._lock:
                state.status, state.detail, state.data = "rejected", event.reason or "rejected", None

    def _explain(self, prediction: Prediction, pixels: np.ndarray) -> cards.Explanation:
        """The CAM of the most probable finding from the version that made the prediction."""
        from chexstack.serving_client import ServingClient, ServingError

        top = int(np.argmax(prediction.probabilities))
        try:
            with ServingClient(self.settings.serving, timeout_s=60.0) as client:
                _, cams, _ = client.explain(
                    prediction.model_name, pixels[None], version=prediction.model_version
                )
        except ServingError as exc:
            return cards.Explanation(unavailable=str(exc).split(": ", 1)[-1][:200])
        except Exception as exc:  # the card stands without its map
            return cards.Explanation(unavailable=f"{type(exc).__name__}: {exc}"[:200])
        return cards.Explanation(label=prediction.labels[top], cam=cams[0, :, :, top])

    # Showing -----------------------------------------------------------------------------------

    def _render(self) -> None:
        """Status table and cards; a card's HTML (two PNGs) is made again only when it changes."""
        import ipywidgets as w

        with self._lock:
            files = list(self._files)
            threshold = float(self.threshold.value)
            self.statuses.value = cards.status_table_html(
                [cards.StatusRow(f.name, f.status, f.detail) for f in files]
            )
            shown = []
            for f in files:
                markup = self._card(f, threshold)
                if markup is None:
                    continue
                widget = self._card_widgets.get(id(f))
                if widget is None:
                    widget = self._card_widgets[id(f)] = w.HTML(markup)
                elif widget.value != markup:
                    widget.value = markup
                shown.append(widget)
            if list(self.cards.children) != shown:
                self.cards.children = tuple(shown)

    def _card(self, f: FileState, threshold: float) -> str | None:
        if f.status == "predicted" and f.prediction is not None and f.pixels is not None:
            key: tuple[object, ...] = ("card", threshold, id(f.prediction), id(f.explanation))
        elif f.status == "rejected":
            key = ("rejected", f.detail)
        else:
            return None
        cached = self._card_cache.get(id(f))
        if cached is not None and cached[0] == key:
            return cached[1]
        if key[0] == "card":
            assert f.prediction is not None and f.pixels is not None
            markup = cards.card_html(f.name, f.prediction, f.pixels, threshold, f.explanation)
        else:
            markup = cards.rejected_html(f.name, f.detail)
        self._card_cache[id(f)] = (key, markup)
        return markup

    def wait(self, timeout_s: float | None = None) -> UploadPanel:
        """Block until every batch is finished: each file predicted, rejected or timed out.

        Without a timeout this returns when the batches' threads end, which they do by themselves
        (each follows its files for at most wait_s, then marks the rest timed out)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._lock:
            threads = list(self._threads)
        for t in threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return self

    def report(self) -> str:
        """One line per file: NAME<TAB>STATUS<TAB>DETAIL."""
        with self._lock:
            return "\n".join(f"{f.name}\t{f.status}\t{f.detail}" for f in self._files)

    def close(self) -> None:
        """Flush and drop the Kafka producer; a later upload opens a new one."""
        if self._uploader is not None:
            self._uploader.close()
            self._uploader = None

    def results(self) -> list[FileState]:
        with self._lock:
            return list(self._files)


def _local_pixels(data: bytes | None, limits: Limits) -> np.ndarray | None:
    """The worker's transform applied here: for a re-upload whose preprocessed message is not re-sent."""
    if not data:
        return None
    try:
        return transform.preprocess_bytes(data, limits)
    except Exception:
        return None


def _batch_text(states: Sequence[FileState]) -> str:
    n = len(states)
    done = sum(s.status in FINAL for s in states)
    predicted = sum(s.status == "predicted" for s in states)
    rejected = sum(s.status == "rejected" for s in states)
    uploaded = sum(s.image_id is not None for s in states)
    return f"{uploaded}/{n} uploaded, {done}/{n} finished ({predicted} predicted, {rejected} rejected)"


def _problem(text: str) -> str:
    return render("cards/problem.html.j2", text=text)
