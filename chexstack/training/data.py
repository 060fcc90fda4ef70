"""Input pipeline: a keras.utils.PyDataset over uint8 shards (numpy only, so every Keras backend runs it).

Batches are uint8 [B,S,S,1] pixels; the model's first step (chexstack.model.normalise, inside the
train step) makes them floats. Keeping uint8 until then moves 4x fewer bytes from the memory-mapped
shards to the device. Shuffling and flips draw from generators seeded by (seed, epoch, batch), so a
batch's content does not depend on which worker thread builds it or on whether the run was resumed.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import keras
import numpy as np


class Reader(Protocol):
    """What chexstack.shards.SplitReader offers (and what tests may pass instead)."""

    def __len__(self) -> int: ...

    def take(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


class ShardBatches(keras.utils.PyDataset):  # type: ignore[misc]
    """Batches of (uint8 pixels [B,S,S,1], float32 labels [B,14]) from one split.

    `training=True`: a new seeded permutation every epoch and a random horizontal flip per image
    (chest radiographs are not left-right symmetric, but CheXNet trained with flips and so do we).
    `epoch`: the epoch the first pass belongs to (a resumed run passes the epoch it continues at).
    `max_steps`: cap on batches per epoch (smoke runs, benchmarks).
    """

    def __init__(
        self,
        reader: Reader,
        batch_size: int,
        *,
        training: bool,
        seed: int = 0,
        epoch: int = 0,
        max_steps: int | None = None,
        workers: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=8, **kwargs)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.reader = reader
        self.size = len(reader)
        if self.size == 0:
            raise ValueError("the split has no images")
        self.batch_size = batch_size
        self.training = training
        self.seed = seed
        self.max_steps = max_steps
        self.epoch = epoch
        self._order = self._permutation(epoch)

    def _permutation(self, epoch: int) -> np.ndarray:
        if not self.training:
            return np.arange(self.size)
        return np.random.default_rng([self.seed, epoch]).permutation(self.size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._order = self._permutation(epoch)

    def __len__(self) -> int:
        batches = math.ceil(self.size / self.batch_size)
        return batches if self.max_steps is None else min(batches, self.max_steps)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} out of range 0..{len(self) - 1}")
        picked = self._order[index * self.batch_size : (index + 1) * self.batch_size]
        # Sorted reads are sequential in the memory-mapped shard; the batch's content is unchanged.
        picked = np.sort(picked)
        images, labels = self.reader.take(picked)
        images = np.asarray(images)
        if self.training:
            rng = np.random.default_rng([self.seed, self.epoch, index, 1])
            flip = rng.random(len(images)) < 0.5
            images = np.where(flip[:, None, None], images[:, :, ::-1], images)
        return images[..., np.newaxis], np.asarray(labels, dtype=np.float32)

    def on_epoch_end(self) -> None:
        self.set_epoch(self.epoch + 1)
