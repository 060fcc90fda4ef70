"""Training input pipeline benchmark: samples/s from shards on disk divided by samples/s from memory.

Both measurements train the same compiled CheXNet in the same process: once fed by the real input
pipeline (chexstack.training.data.ShardBatches over memory-mapped shards, with shuffling and flips),
once fed from tensors already in memory. A ratio near 1 means the pipeline keeps the model busy
(target >= 0.9). Rounds alternate between the two feeds and the best round of each counts, so load
from other processes affects both alike.

    python bench/train.py --image-size 64 --steps 20            # synthetic data set made on the fly
    python bench/train.py --data-dir SHARDS --steps 50          # an existing `chexstack data prepare` output
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _synthetic_shards(root: Path, image_size: int, count: int) -> Path:
    from chexstack.datasets import prepare
    from chexstack.synth import synthesize

    synthesize(root / "raw", count, seed=0, size=max(128, image_size), dicom_fraction=0.0)
    prepare(root / "raw", root / "shards", key=b"bench" * 8, image_size=image_size,
            val_fraction=0.1, test_fraction=0.0, workers=1)  # fmt: skip
    return root / "shards"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, help="Prepared shards (default: synthesize a small set).")
    parser.add_argument("--image-size", type=int, default=64, help="Image size of the synthetic set.")
    parser.add_argument("--steps", type=int, default=20, help="Training steps per measured round.")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2, help="Measured rounds per feed (best counts).")
    parser.add_argument("--workers", type=int, default=2, help="Pipeline threads (as TrainConfig.workers).")
    args = parser.parse_args()

    import keras
    import numpy as np

    from chexstack.model import build_chexnet, normalise
    from chexstack.shards import ShardedDataset
    from chexstack.training.callbacks import bce_loss
    from chexstack.training.data import ShardBatches
    from chexstack.training.run import has_gpu, list_devices

    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        data_dir = args.data_dir or _synthetic_shards(
            Path(tmp), args.image_size, args.batch_size * args.steps + 40
        )
        train = ShardedDataset.open(data_dir).split("train")
        size = train.image_size
        devices = list_devices()
        chexnet = build_chexnet(seed=0, image_size=size)
        pixels = keras.Input((size, size, 1), dtype="uint8")
        model = keras.Model(pixels, chexnet(normalise(pixels)))
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=bce_loss(), jit_compile=has_gpu(devices))

        n = args.steps * args.batch_size
        pipeline = ShardBatches(train, args.batch_size, training=True, seed=0, max_steps=args.steps,
                                workers=args.workers)  # fmt: skip
        # The in-memory feed: the same number of real images, copied into device tensors up front.
        idx = np.resize(np.arange(len(train)), n)
        images, labels = train.take(idx)
        x = keras.ops.convert_to_tensor(images[..., None])
        y = keras.ops.convert_to_tensor(labels.astype("float32"))

        def memory_round() -> float:
            start = time.perf_counter()
            model.fit(x, y, batch_size=args.batch_size, epochs=1, shuffle=False, verbose=0)
            return float(n / (time.perf_counter() - start))

        def pipeline_round() -> float:
            start = time.perf_counter()
            model.fit(pipeline, epochs=1, shuffle=False, verbose=0)
            return float(len(pipeline) * args.batch_size / (time.perf_counter() - start))

        # Warm-up: trace the train step and start both feeds once before anything is timed.
        model.fit(x[: args.batch_size * 2], y[: args.batch_size * 2], batch_size=args.batch_size, verbose=0)
        pipeline_round()
        memory, real = [], []
        for _ in range(args.rounds):
            memory.append(memory_round())
            real.append(pipeline_round())
        ratio = max(real) / max(memory)
        print(f"backend {keras.backend.backend()} devices {devices} image {size}x{size} "
              f"batch {args.batch_size} steps {args.steps} rounds {args.rounds}")  # fmt: skip
        rounds = ", ".join(f"{v:.1f}" for v in memory)
        print(f"in-memory tensors: {max(memory):8.1f} samples/s  (rounds: {rounds})")
        print(
            f"shard pipeline:    {max(real):8.1f} samples/s  (rounds: {', '.join(f'{v:.1f}' for v in real)})"
        )
        print(f"ratio pipeline / in-memory: {ratio:.3f} (target >= 0.9)")


if __name__ == "__main__":
    main()
