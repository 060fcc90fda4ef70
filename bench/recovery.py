"""Recovery benchmark: how long the workers take to resume after the broker restarts on its data,
divided by the cold start of the same workers (process start -> first prediction) in the same run.

    .venv/bin/python bench/recovery.py [--images 60] [--down-s 15] [--kill-one]
    .venv/bin/python bench/recovery.py --killed-transaction

The run: a real broker, `chexstack serve`, 2 preprocess and 2 router processes. After a warm-up, a
backlog of uploads; once a quarter of it is predicted (batches are in flight), the broker is stopped
cleanly, or (`--kill-one`, a host crash) one worker of each kind is SIGKILLed in the middle of its
transaction and then the broker too; `--down-s` later it starts again on the same data. A follower
(read_committed, as every downstream reader) notes when each prediction becomes visible. From the moment
the broker accepts connections again it measures when the first image that was in flight at the stop is
predicted (processing resumed) and when the last one is (everything recovered), and checks that every
upload got exactly one prediction and nothing reached the dead-letter topic. A worker that exits is
started again, as compose's restart policy does. Prints a Markdown table for docs/performance.md.

`--killed-transaction` measures only what a worker killed mid-transaction costs the others: how long its
open transaction hides later messages of its partitions from read_committed readers (until the broker
aborts it), with the workers' transaction timeout and with librdkafka's default.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402

from bench.common import free_port, free_port_pair, start, wait_http  # noqa: E402
from chexstack.blobstore import open_store  # noqa: E402
from chexstack.broker import Broker  # noqa: E402
from chexstack.commands.kafka import DEFAULT_PARTITIONS, DEFAULT_RETENTION_MS  # noqa: E402
from chexstack.deid import load_or_create_key  # noqa: E402
from chexstack.ingest.uploader import Uploader  # noqa: E402
from chexstack.messages import Prediction, decode  # noqa: E402
from chexstack.settings import (  # noqa: E402
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    DEFAULT_TRANSACTION_TIMEOUT_S,
    Limits,
)
from chexstack.synth import make_png, render_radiograph  # noqa: E402
from chexstack.topics import Topics, ensure_topics  # noqa: E402


class Follower(threading.Thread):
    """Reads a topic (read_committed) from the beginning, noting when each message became visible.

    It keeps going while the broker is down: librdkafka reconnects by itself.
    """

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.topic = bootstrap, topic
        self.seen: list[tuple[float, bytes]] = []  # (time.time() when read, value)
        self.stop = threading.Event()

    def run(self) -> None:
        c = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"bench-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "log_level": 2,  # quiet while the broker is down: reconnecting is expected
                # Reconnect as fast as the workers do, so that the follower adds no delay of its own.
                "reconnect.backoff.max.ms": 1000,
                "metadata.recovery.strategy": "none",
            }
        )
        parts = list(c.list_topics(self.topic, timeout=30).topics[self.topic].partitions)
        c.assign([TopicPartition(self.topic, p, 0) for p in parts])
        try:
            while not self.stop.is_set():
                m = c.poll(0.1)
                if m is None or m.error() is not None:
                    continue
                self.seen.append((time.time(), m.value() or b""))
        finally:
            c.close()

    def predictions(self) -> list[tuple[float, Prediction]]:
        return [(t, decode(Prediction, v)) for t, v in list(self.seen)]


class Supervisor(threading.Thread):
    """Starts the workers and, like compose's `restart: unless-stopped`, starts again any that exits."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        super().__init__(daemon=True)
        self.env, self.logs = env, logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.killed: set[str] = set()
        self.restarts: list[tuple[str, int]] = []  # (worker, exit status)
        self.stop = threading.Event()

    def start_worker(self, name: str) -> None:
        self.procs[name] = start([name.split("-")[0]], self.env, self.logs / f"{name}.log")

    def kill(self, name: str) -> None:
        """SIGKILL, and no restart: the other worker of its kind takes over its partitions."""
        self.killed.add(name)
        self.procs[name].kill()

    def run(self) -> None:
        while not self.stop.wait(0.2):
            for name, p in list(self.procs.items()):
                if name not in self.killed and p.poll() is not None:
                    self.restarts.append((name, p.returncode))
                    self.start_worker(name)


def wait_until(cond: object, timeout_s: float, what: str) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return time.time()
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def restart_broker(broker: Broker, down_s: float, crash: bool) -> tuple[float, float]:
    """Stop (or kill) the broker, wait, start it on its data; returns (stopped, accepting again) times."""
    if crash:
        broker.kill()
    else:
        broker.down()
    stopped = time.time()
    time.sleep(down_s)
    errors: list[BaseException] = []

    def up() -> None:
        try:
            broker.up()
        except BaseException as exc:  # reported below
            errors.append(exc)

    t = threading.Thread(target=up)
    t.start()
    accepting = wait_until(lambda: broker.accepts_connections() or errors, 120, "the broker to listen")
    t.join()
    if errors:
        raise errors[0]
    return stopped, accepting


# A worker that dies with its transaction open: the transaction stays open on the broker.
KILLED_PRODUCER = """
import sys, time
from confluent_kafka import Producer
p = Producer({"bootstrap.servers": sys.argv[1], "transactional.id": sys.argv[2],
              "transaction.timeout.ms": int(sys.argv[3])})
p.init_transactions(30)
p.begin_transaction()
p.produce(sys.argv[4], value=b"never committed", partition=0)
p.flush(10)
print("open", flush=True)
time.sleep(600)
"""


def killed_transaction_hold(timeouts_s: list[float]) -> None:
    """How long a SIGKILLed producer's open transaction hides later messages of its partition from
    read_committed readers, for each transaction.timeout.ms."""
    work = Path(tempfile.mkdtemp(prefix="chexstack-recovery-"))
    broker = Broker(work / "kafka", port=free_port_pair())
    try:
        broker.up()
        topic = "bench.held"
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        for fut in admin.create_topics([NewTopic(topic, 1, 1)]).values():
            fut.result()
        print("| transaction.timeout.ms | later messages hidden after the kill | ratio to the timeout |")
        print("|---|---|---|")
        for timeout_s in timeouts_s:
            args = [broker.bootstrap, uuid.uuid4().hex, str(int(timeout_s * 1000)), topic]
            child = subprocess.Popen(
                [sys.executable, "-c", KILLED_PRODUCER, *args], stdout=subprocess.PIPE, text=True
            )
            assert child.stdout is not None and child.stdout.readline().strip() == "open"
            child.kill()
            child.wait()
            killed = time.monotonic()
            marker = uuid.uuid4().hex.encode()
            producer = Producer({"bootstrap.servers": broker.bootstrap})
            producer.produce(topic, value=marker, partition=0)
            producer.flush(10)
            reader = Consumer(
                {
                    "bootstrap.servers": broker.bootstrap,
                    "group.id": f"bench-{uuid.uuid4().hex}",
                    "isolation.level": "read_committed",
                }
            )
            reader.assign([TopicPartition(topic, 0, 0)])
            while True:
                m = reader.poll(0.1)
                if m is not None and m.error() is None and m.value() == marker:
                    break
            hidden = time.monotonic() - killed
            reader.close()
            print(f"| {int(timeout_s * 1000)} | {hidden:.1f} s | {hidden / timeout_s:.2f} |")
    finally:
        broker.down()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=60)
    ap.add_argument("--down-s", type=float, default=15.0, help="How long the broker stays down.")
    ap.add_argument(
        "--kill-one",
        action="store_true",
        help="SIGKILL one worker of each kind mid-transaction, then the broker.",
    )
    ap.add_argument("--timeout-s", type=float, default=900.0, help="Give up waiting for recovery.")
    ap.add_argument("--keep", action="store_true", help="Keep the work directory (logs) and print it.")
    ap.add_argument(
        "--killed-transaction",
        action="store_true",
        help="Only measure how long a killed worker's open transaction holds back readers.",
    )
    ns = ap.parse_args()
    if ns.killed_transaction:
        killed_transaction_hold([DEFAULT_TRANSACTION_TIMEOUT_S, 60.0])  # 60 s: librdkafka's default
        return

    work = Path(tempfile.mkdtemp(prefix="chexstack-recovery-"))
    supervisor: Supervisor | None = None
    serve: subprocess.Popen[bytes] | None = None
    broker = Broker(work / "kafka", port=free_port_pair())
    followers: list[Follower] = []
    try:
        broker.up()
        topics = Topics("bench.")
        ensure_topics(broker.bootstrap, DEFAULT_PARTITIONS, DEFAULT_RETENTION_MS, prefix=topics.prefix)
        from chexstack.model import build_chexnet, export_saved_model

        models = work / "models" / "chexnet"
        export_saved_model(build_chexnet(seed=0), models, 1, weights_source="random")
        rng = np.random.default_rng(0)
        files = [make_png(render_radiograph(rng, [], size=512)) for _ in range(ns.images + 1)]

        grpc_port, rest_port = free_port(), free_port()
        env = {
            "CHEXSTACK_KAFKA": broker.bootstrap,
            "CHEXSTACK_STORE": str(work / "blobs"),
            "CHEXSTACK_TOPIC_PREFIX": topics.prefix,
            "CHEXSTACK_SERVING": f"127.0.0.1:{grpc_port}",
            "CHEXSTACK_LOG_LEVEL": "INFO",
        }
        serve = start(
            ["serve", "--model-name", "chexnet", "--model-base-path", str(models),
             "--serving", f"127.0.0.1:{grpc_port}", "--serving-rest", f"127.0.0.1:{rest_port}"],
            env, work / "serve.log",
        )  # fmt: skip
        wait_http(f"http://127.0.0.1:{rest_port}/v1/models/chexnet", "AVAILABLE")
        store = open_store(str(work / "blobs"))
        uploader = Uploader(
            bootstrap=broker.bootstrap,
            store=store,
            key=load_or_create_key(store, None),
            limits=Limits(max_bytes=DEFAULT_MAX_BYTES, max_pixels=DEFAULT_MAX_PIXELS),
            topics=topics,
        )
        follower = Follower(broker.bootstrap, topics.predictions)
        follower.start()
        followers.append(follower)

        # Baseline: one image waiting, then the workers start from nothing.
        first = uploader.upload_bytes(files[0], "warmup.png")
        assert first.image_id, first.reason
        started = time.time()
        supervisor = Supervisor(env, work)
        for name in ("preprocess-0", "preprocess-1", "route-0", "route-1"):
            supervisor.start_worker(name)
        supervisor.start()
        cold = wait_until(lambda: follower.seen, ns.timeout_s, "the first prediction") - started

        ids = []
        for i, data in enumerate(files[1:]):
            res = uploader.upload_bytes(data, f"recovery{i}.png")
            assert res.image_id, res.reason
            ids.append(res.image_id)
        uploader.close()
        wanted = set(ids)

        def predicted() -> set[str]:
            return {p.image_id for _, p in follower.predictions()} & wanted

        wait_until(lambda: len(predicted()) >= len(ids) // 4, ns.timeout_s, "a quarter of the backlog")
        visible_before = predicted()
        if ns.kill_one:
            # Hang the broker for a moment first: a worker busy with a batch is then inside its commit,
            # so the one killed leaves an open transaction behind (the worst case for the others).
            broker.pause()
            time.sleep(3)
            for name in ("preprocess-1", "route-1"):
                supervisor.kill(name)
        stopped, accepting = restart_broker(broker, ns.down_s, crash=ns.kill_one)
        in_flight = wanted - visible_before
        wait_until(lambda: predicted() == wanted, ns.timeout_s, "every image of the backlog")
        time.sleep(2)  # a duplicate committed late would show up here
        follower.stop.set()
        follower.join(10)
        preds = follower.predictions()
        # When each in-flight image became visible to a read_committed reader.
        seen_at = {p.image_id: t for t, p in reversed(preds) if p.image_id in in_flight}
        after = sorted(t for t in seen_at.values() if t >= accepting)
        if not after:
            raise SystemExit("every image was predicted before the broker came back: use more --images")
        per_image = Counter(p.image_id for _, p in preds if p.image_id in wanted)
        duplicates = sum(n - 1 for n in per_image.values())
        dlq = Follower(broker.bootstrap, topics.dlq)
        dlq.start()
        followers.append(dlq)
        time.sleep(5)
        dead_letters = len(dlq.seen)

        resumed_s, done_s = after[0] - accepting, after[-1] - accepting
        before_stop = len(visible_before)
        print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
        print(
            f"images: {ns.images} (512x512 PNG), workers: 2 preprocess + 2 router, broker down "
            f"{accepting - stopped:.0f} s, {before_stop} predicted before the stop"
            + (", one worker of each kind SIGKILLed mid-transaction, then the broker" if ns.kill_one else "")
            + "\n"
        )
        print("| measure | value |")
        print("|---|---|")
        print(f"| cold start of the workers (start -> first prediction) | {cold:.1f} s |")
        print(f"| broker accepting again -> first in-flight image predicted | {resumed_s:.1f} s |")
        print(f"| broker accepting again -> every in-flight image predicted | {done_s:.1f} s |")
        print(f"| **ratio resumed / cold start** | **{resumed_s / cold:.2f}** |")
        print(f"| **ratio all predicted / cold start** | **{done_s / cold:.2f}** |")
        restarts = ", ".join(f"{n} (exit {rc})" for n, rc in supervisor.restarts) or "none"
        print(f"| workers restarted (exited, started again) | {restarts} |")
        print(f"| duplicates / missing / dead letters | {duplicates} / {len(wanted - set(per_image))} / "
              f"{dead_letters} |")  # fmt: skip
    finally:
        for f in followers:
            f.stop.set()
        procs = [*(supervisor.procs.values() if supervisor else []), *([serve] if serve else [])]
        if supervisor:
            supervisor.stop.set()
            supervisor.join(5)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        broker.down()
        if ns.keep:
            print(f"logs: {work}")


if __name__ == "__main__":
    main()
