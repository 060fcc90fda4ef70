"""Per-epoch evaluation, TensorBoard events and resumable state, as Keras callbacks.

Events are written with tensorboard's own pure-Python writer (no tf.summary), so any Keras backend
can log; every epoch's events are flushed before the next epoch starts, so TensorBoard shows a
running job live.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from chexstack.labels import LABELS
from chexstack.training import cam
from chexstack.training.metrics import mean_auroc, per_class_auroc

log = logging.getLogger(__name__)

LOSS_EPSILON = 1e-7  # the clip keras.losses.binary_crossentropy uses


class EventWriter:
    """Scalars, images and hparams into one TensorBoard run directory."""

    def __init__(self, run_dir: Path) -> None:
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        run_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir = run_dir
        self._writer = EventFileWriter(str(run_dir))

    def _add(self, summary: Any, step: int) -> None:
        from tensorboard.compat.proto import event_pb2

        self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

    def scalars(self, values: dict[str, float], step: int) -> None:
        from tensorboard.compat.proto import summary_pb2

        summary = summary_pb2.Summary(
            value=[summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in values.items()]
        )
        self._add(summary, step)

    def image(self, tag: str, rgb: np.ndarray, step: int) -> None:
        from tensorboard.compat.proto import summary_pb2

        img = summary_pb2.Summary.Image(
            height=rgb.shape[0], width=rgb.shape[1], colorspace=3, encoded_image_string=cam.png(rgb)
        )
        self._add(summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, image=img)]), step)

    def hparams(self, hparams: dict[str, Any], metrics: Sequence[str], trial_id: str) -> None:
        from tensorboard.plugins.hparams import api as hp

        self._add(
            hp.hparams_config_pb(
                hparams=[hp.HParam(k) for k in hparams], metrics=[hp.Metric(m) for m in metrics]
            ),
            0,
        )
        self._add(hp.hparams_pb(hparams, trial_id=trial_id), 0)
        self.flush()

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def class_weights(label_counts: np.ndarray, total: int) -> tuple[np.ndarray, np.ndarray]:
    """CheXNet's weighted BCE: positives weigh |N|/(|P|+|N|), negatives |P|/(|P|+|N|), per class.

    A class with no positives (or no negatives) in the training split keeps equal weights 1/2, so it
    still trains its output towards the only answer the data has.
    """
    pos = np.asarray(label_counts, dtype=np.float64)
    neg = total - pos
    defined = (pos > 0) & (neg > 0)
    w_pos = np.where(defined, neg / max(total, 1), 0.5)
    w_neg = np.where(defined, pos / max(total, 1), 0.5)
    return w_pos.astype(np.float32), w_neg.astype(np.float32)


def bce_loss(w_pos: np.ndarray | None = None, w_neg: np.ndarray | None = None) -> Callable[[Any, Any], Any]:
    """Per-class binary cross-entropy averaged over classes (keras.ops only); weighted when given."""
    pos = keras.ops.convert_to_tensor(np.ones(len(LABELS), np.float32) if w_pos is None else w_pos)
    neg = keras.ops.convert_to_tensor(np.ones(len(LABELS), np.float32) if w_neg is None else w_neg)

    def loss(y_true: Any, y_pred: Any) -> Any:
        y = keras.ops.cast(y_true, "float32")
        p = keras.ops.clip(keras.ops.cast(y_pred, "float32"), LOSS_EPSILON, 1 - LOSS_EPSILON)
        terms = -(pos * y * keras.ops.log(p) + neg * (1 - y) * keras.ops.log(1 - p))
        return keras.ops.mean(terms, axis=-1)

    return loss


def bce_numpy(
    y: np.ndarray, p: np.ndarray, w_pos: np.ndarray | None = None, w_neg: np.ndarray | None = None
) -> float:
    """The same loss as bce_loss, averaged over a whole split in numpy."""
    pos = 1.0 if w_pos is None else w_pos
    neg = 1.0 if w_neg is None else w_neg
    q = np.clip(p.astype(np.float64), LOSS_EPSILON, 1 - LOSS_EPSILON)
    return float(np.mean(-(pos * y * np.log(q) + neg * (1 - y) * np.log(1 - q))))


def current_lr(optimizer: Any) -> float:
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


class EpochEvaluation(keras.callbacks.Callback):  # type: ignore[misc]
    """After each epoch: val loss and AUROC (into `logs` for the callbacks after it), lr, CAM samples.

    Must come before the callbacks that read logs["val_loss"] (plateau, checkpoint, resume state).
    """

    def __init__(
        self,
        chexnet: keras.Model,
        val_data: Any,
        val_labels: np.ndarray,
        writer: EventWriter,
        *,
        samples: tuple[np.ndarray, np.ndarray] | None = None,
        loss_weights: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        super().__init__()
        self.chexnet = chexnet
        self.val_data = val_data
        self.val_labels = np.asarray(val_labels, dtype=np.float32)
        self.writer = writer
        self.samples = samples
        self.loss_weights = loss_weights
        self.history: list[dict[str, Any]] = []

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs if logs is not None else {}
        scores = np.asarray(self.model.predict(self.val_data, verbose=0), dtype=np.float32)
        weights = self.loss_weights or (None, None)
        val_loss = bce_numpy(self.val_labels, scores, *weights)
        aurocs = per_class_auroc(self.val_labels, scores)
        mean = mean_auroc(aurocs)
        lr = current_lr(self.model.optimizer)
        logs.update(val_loss=val_loss, val_auroc_mean=mean, learning_rate=lr)
        scalars = {"loss/val": val_loss, "learning_rate": lr}
        if "loss" in logs:
            scalars["loss/train"] = float(logs["loss"])
        if not math.isnan(mean):
            scalars["auroc/mean"] = mean
        scalars.update({f"auroc/{k}": v for k, v in aurocs.items() if not math.isnan(v)})
        self.writer.scalars(scalars, epoch)
        if self.samples is not None and len(self.samples[0]):
            pixels, truth = self.samples
            probabilities, cams = cam.compute(self.chexnet, pixels)
            for i in range(len(pixels)):
                self.writer.image(
                    f"cam/sample_{i}", cam.panel(pixels[i], cams[i], probabilities[i], truth[i]), epoch
                )
        self.writer.flush()
        log.info("epoch %d: loss %.4f val_loss %.4f val mean AUROC %.4f lr %.3g",
                 epoch + 1, logs.get("loss", math.nan), val_loss, mean, lr)  # fmt: skip
        self.history.append(
            {
                "epoch": epoch + 1,
                "loss": float(logs.get("loss", math.nan)),
                "val_loss": val_loss,
                "val_auroc_mean": mean,
                "val_auroc": aurocs,
                "learning_rate": lr,
            }
        )


def _atomic_json(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, path)


class JobState(keras.callbacks.Callback):  # type: ignore[misc]
    """Best-val-loss weights and the resume state in the job directory, written after every epoch.

    Files: best.weights.h5 (CheXNet weights, loadable by build_chexnet), last-<epoch>.weights.h5 and
    last-<epoch>.optimizer.npz (the optimizer's variables: step count, lr, moments), and state.json,
    written last: a crash mid-save leaves the previous epoch's state intact.
    """

    STATE = "state.json"
    BEST = "best.weights.h5"

    def __init__(
        self, job_dir: Path, chexnet: keras.Model, plateau: keras.callbacks.ReduceLROnPlateau
    ) -> None:
        super().__init__()
        self.job_dir = job_dir
        self.chexnet = chexnet
        self.plateau = plateau
        self.state: dict[str, Any] = self.load(job_dir) or {"epoch": 0, "best_val_loss": math.inf}

    @classmethod
    def load(cls, job_dir: Path) -> dict[str, Any] | None:
        path = job_dir / cls.STATE
        if not path.is_file():
            return None
        try:
            doc: dict[str, Any] = json.loads(path.read_text())
            int(doc["epoch"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(
                f"{path}: corrupt resume state ({exc}); remove the job directory to start over"
            ) from exc
        return doc

    def restore(self, model: keras.Model) -> int:
        """Load weights and optimizer state of the last finished epoch; returns the epochs done."""
        done = int(self.state["epoch"])
        if done == 0:
            return 0
        self.chexnet.load_weights(self.job_dir / self.state["weights"])
        optimizer = model.optimizer
        optimizer.build(model.trainable_variables)
        saved = np.load(self.job_dir / self.state["optimizer"])
        arrays = [saved[f"v{i}"] for i in range(len(saved.files))]
        variables = list(optimizer.variables)
        if len(arrays) != len(variables) or any(
            tuple(a.shape) != tuple(v.shape) for a, v in zip(arrays, variables, strict=False)
        ):
            raise ValueError(
                f"{self.job_dir / self.state['optimizer']}: optimizer state does not fit this model and "
                "optimizer (was it saved with another mixed_precision setting?)"
            )
        for variable, value in zip(variables, arrays, strict=True):
            variable.assign(value)
        return done

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        # ReduceLROnPlateau resets itself at train begin; put back where the interrupted run was.
        plateau = self.state.get("plateau")
        if plateau:
            self.plateau.best = plateau["best"]
            self.plateau.wait = plateau["wait"]
            self.plateau.cooldown_counter = plateau["cooldown_counter"]

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        val_loss = float(logs["val_loss"])
        if val_loss < float(self.state["best_val_loss"]):
            tmp = self.job_dir / "best-tmp.weights.h5"
            self.chexnet.save_weights(tmp)
            os.replace(tmp, self.job_dir / self.BEST)
            self.state["best_val_loss"] = val_loss
            self.state["best_epoch"] = epoch + 1
        name = f"last-{epoch + 1:05d}"
        self.chexnet.save_weights(self.job_dir / f"{name}.weights.h5")
        arrays = {
            f"v{i}": keras.ops.convert_to_numpy(v) for i, v in enumerate(self.model.optimizer.variables)
        }
        with (self.job_dir / f"{name}.optimizer.npz").open("wb") as fh:
            np.savez(fh, **arrays)
        previous = (self.state.get("weights"), self.state.get("optimizer"))
        self.state.update(
            epoch=epoch + 1,
            weights=f"{name}.weights.h5",
            optimizer=f"{name}.optimizer.npz",
            learning_rate=current_lr(self.model.optimizer),
            optimizer_iterations=int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)),
            plateau={
                "best": float(self.plateau.best),
                "wait": int(self.plateau.wait),
                "cooldown_counter": int(self.plateau.cooldown_counter),
            },
        )
        _atomic_json(self.job_dir / self.STATE, self.state)
        for old in previous:
            if old and old not in (self.state["weights"], self.state["optimizer"]):
                (self.job_dir / old).unlink(missing_ok=True)
