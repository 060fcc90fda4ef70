"""Streaming benchmark: end-to-end images/s through Kafka, preprocess, router and serving, divided by
the same model's direct throughput measured in the same run; plus single-image latency at low load.

    .venv/bin/python bench/pipeline.py [--images 160] [--latency-samples 20]

Prints a Markdown table for docs/performance.md. Numbers are ratios within one run on one machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import free_port, free_port_pair, start, wait_http  # noqa: E402
from chexstack.blobstore import open_store  # noqa: E402
from chexstack.broker import Broker  # noqa: E402
from chexstack.commands.kafka import DEFAULT_PARTITIONS, DEFAULT_RETENTION_MS  # noqa: E402
from chexstack.deid import load_or_create_key  # noqa: E402
from chexstack.ingest.uploader import Uploader  # noqa: E402
from chexstack.predictions import read_predictions  # noqa: E402
from chexstack.settings import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, Limits  # noqa: E402
from chexstack.synth import make_png, render_radiograph  # noqa: E402
from chexstack.topics import Topics, ensure_topics  # noqa: E402
from chexstack.transform import preprocess_bytes  # noqa: E402

# The CLI's upload limits.
LIMITS = Limits(max_bytes=DEFAULT_MAX_BYTES, max_pixels=DEFAULT_MAX_PIXELS)


def wait_log(path: Path, needle: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and needle in path.read_text(errors="replace"):
            return
        time.sleep(0.3)
    raise RuntimeError(f"{path.name}: never logged {needle!r}")


def direct_throughput(model_dir: Path, pixels: np.ndarray, batch: int) -> float:
    """The exported model called in-process with the same batch size the router uses."""
    import tensorflow as tf

    fn = tf.saved_model.load(str(model_dir)).signatures["serving_default"]
    x = tf.constant(pixels[..., None])
    fn(image=x[:batch])  # warm-up (graph tracing, allocations)
    t0 = time.perf_counter()
    for i in range(0, len(pixels), batch):
        fn(image=x[i : i + batch])
    return len(pixels) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=160)
    ap.add_argument("--latency-samples", type=int, default=20)
    ap.add_argument("--batch", type=int, default=32)
    ns = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="chexstack-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    broker = Broker(work / "kafka", port=free_port_pair())
    try:
        broker.up()
        topics = Topics("bench.")
        ensure_topics(broker.bootstrap, DEFAULT_PARTITIONS, DEFAULT_RETENTION_MS, prefix=topics.prefix)
        models = work / "models" / "chexnet"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "chexstack",
                "models",
                "export",
                "--out",
                str(models),
                "--version",
                "1",
                "--weights",
                "random",
                "--seed",
                "0",
            ],
            check=True,
            capture_output=True,
        )
        rng = np.random.default_rng(0)
        files = [make_png(render_radiograph(rng, [], size=512)) for _ in range(ns.images)]
        pixels = np.stack([preprocess_bytes(f, LIMITS) for f in files])

        direct = direct_throughput(models / "1", pixels, ns.batch)

        grpc_port, rest_port = free_port(), free_port()
        env = {
            "CHEXSTACK_KAFKA": broker.bootstrap,
            "CHEXSTACK_STORE": str(work / "blobs"),
            "CHEXSTACK_TOPIC_PREFIX": topics.prefix,
            "CHEXSTACK_SERVING": f"127.0.0.1:{grpc_port}",
            "CHEXSTACK_LOG_LEVEL": "INFO",
        }
        procs.append(
            start(
                [
                    "serve",
                    "--model-name",
                    "chexnet",
                    "--model-base-path",
                    str(models),
                    "--serving",
                    f"127.0.0.1:{grpc_port}",
                    "--serving-rest",
                    f"127.0.0.1:{rest_port}",
                    "--enable-batching",
                ],
                env,
                work / "serve.log",
            )
        )
        wait_http(f"http://127.0.0.1:{rest_port}/v1/models/chexnet", "AVAILABLE")

        store = open_store(str(work / "blobs"))
        uploader = Uploader(
            bootstrap=broker.bootstrap,
            store=store,
            key=load_or_create_key(store, None),
            limits=LIMITS,
            topics=topics,
        )
        # Throughput: a backlog of uploads, then the workers drain it.
        ids = []
        for i, data in enumerate(files):
            res = uploader.upload_bytes(data, f"bench{i}.png")
            assert res.image_id, res.reason
            ids.append(res.image_id)
        procs.append(start(["preprocess"], env, work / "preprocess.log"))
        procs.append(start(["route", "--router-max-batch", str(ns.batch)], env, work / "route.log"))
        preds = list(read_predictions(broker.bootstrap, topics.predictions, image_ids=ids, timeout_s=1800))
        assert len({p.image_id for p in preds}) == len(ids), "missing predictions"
        # Steady state: from the first prediction batch to the last one (excludes worker start-up).
        times = sorted(p.predicted_at_ms for p in preds)
        first_batch = sum(1 for t in times if t == times[0])
        e2e = (len(times) - first_batch) / ((times[-1] - times[0]) / 1000)

        # Latency: one image at a time through an idle pipeline.
        lat = []
        for i in range(ns.latency_samples):
            res = uploader.upload_bytes(make_png(render_radiograph(rng, [], size=512)), f"lat{i}.png")
            assert res.image_id
            (p,) = read_predictions(
                broker.bootstrap, topics.predictions, image_ids=[res.image_id], timeout_s=120
            )
            lat.append(p.latency.end_to_end_ms)
            time.sleep(0.2)
        uploader.close()
        lat.sort()
        p50 = statistics.median(lat)
        p99 = lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))]
        print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
        print(f"images: {ns.images} (512x512 PNG), router micro-batch: {ns.batch}\n")
        print("| measure | value |")
        print("|---|---|")
        print(
            f"| direct model throughput (in-process SavedModel, batch {ns.batch}) | {direct:.1f} images/s |"
        )
        print(f"| end-to-end pipeline throughput (upload backlog drained) | {e2e:.1f} images/s |")
        print(f"| **ratio end-to-end / direct** (target >= 0.8) | **{e2e / direct:.2f}** |")
        print(f"| single-image end-to-end latency p50 (n={len(lat)}) | {p50:.0f} ms |")
        print(f"| single-image end-to-end latency p99 (n={len(lat)}) | {p99:.0f} ms |")
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        broker.down()


if __name__ == "__main__":
    main()
