"""What a user sees when Kafka is not there, and `predictions --follow` when it is (real broker, real
processes: `python -m chexstack`, whose stderr is what the terminal shows).

Two ways Kafka is not there: a closed port (connection refused at once), and a port that accepts
connections but never answers (a listening socket nobody reads). Every command says so in one
`error: ...` line naming the address, within its timeout (a hang fails the test), without a traceback,
librdkafka's connection log or TensorFlow's start-up banner, all of which `--verbose` shows.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from chexstack.bus import make_producer, produce_sync
from chexstack.labels import LABELS
from chexstack.messages import DeadLetter, Latency, Prediction, now_ms
from chexstack.topics import Topics
from tests.conftest import free_port

pytestmark = pytest.mark.integration

# librdkafka's own log lines on stderr (its default), and TensorFlow's banner (absl, oneDNN).
NOISE = ("%3|", "Connect to ipv4", "rdkafka#", "absl::InitializeLog", "oneDNN", "cpu_feature_guard")


def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CHEXSTACK_")}
    return subprocess.Popen(
        [sys.executable, "-m", "chexstack", *args],
        env=base | (env or {}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=120)  # a command that hangs fails the test
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"{proc.args!r} still running after 120 s: {err[-2000:]}")
    return proc.returncode, out, err


@pytest.fixture
def silent_kafka() -> Iterator[str]:
    """A port whose connections the kernel accepts (the listen backlog) and nobody ever answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(128)
        yield f"127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize("where", ["closed", "silent"])
def test_every_command_says_in_one_line_that_kafka_does_not_answer(
    where: str, silent_kafka: str, tmp_path: Path
) -> None:
    bootstrap = f"127.0.0.1:{free_port()}" if where == "closed" else silent_kafka
    image = tmp_path / "a.png"
    image.write_bytes(b"never read: Kafka is asked first")
    commands = [
        ["predictions", "--timeout", "5"],
        ["predictions", "--image-id", "0" * 32, "--timeout", "5"],
        ["predictions", "--follow", "--timeout", "5"],
        ["ab", "show", "chexnet"],
        ["ab", "set", "chexnet"],  # no weights: serving is not asked, Kafka is
        ["preprocess"],
        ["route"],  # imports TensorFlow (serving's protos): its banner stays out too
        ["upload", str(image)],
        ["dlq", "list"],
    ]
    env = {"CHEXSTACK_HOME": str(tmp_path / "home"), "CHEXSTACK_STORE": str(tmp_path / "blobs")}
    # All at once: each waits for Kafka on its own.
    procs = [(args, start(*args, "--kafka", bootstrap, env=env)) for args in commands]
    for args, proc in procs:
        code, out, err = finish(proc)
        assert code != 0, (args, out, err)
        assert "Traceback" not in err, (args, err)
        assert not any(n in err for n in NOISE), (args, err)
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and bootstrap in lines[0], (args, err)
        # No user set: an authenticating broker would look the same, so the fix is named.
        assert "CHEXSTACK_KAFKA_USER" in lines[0], (args, err)


def test_verbose_shows_librdkafka_and_still_ends_with_the_error_line() -> None:
    bootstrap = f"127.0.0.1:{free_port()}"
    code, _, err = finish(start("--verbose", "predictions", "--timeout", "3", "--kafka", bootstrap))
    assert code == 1 and "Traceback" not in err
    assert f"Connect to ipv4#{bootstrap} failed" in err and "DEBUG chexstack.librdkafka" in err, err
    assert err.splitlines()[-1].startswith(f"error: no answer from Kafka at {bootstrap}")
    # CHEXSTACK_LOG_LEVEL=DEBUG, as before --verbose, does the same.
    code, _, err = finish(
        start("predictions", "--timeout", "3", "--kafka", bootstrap, env={"CHEXSTACK_LOG_LEVEL": "DEBUG"})
    )
    assert code == 1 and f"Connect to ipv4#{bootstrap} failed" in err


def test_verbose_shows_the_tensorflow_banner() -> None:
    code, _, err = finish(start("--verbose", "route", "--kafka", f"127.0.0.1:{free_port()}"))
    assert code == 1 and "Traceback" not in err
    assert "oneDNN" in err or "absl::InitializeLog" in err, err


def test_follow_is_a_table_with_dead_letters_and_json_is_unchanged(
    kafka: str, topics: dict[str, str]
) -> None:
    t = Topics(topics["prefix"])
    image, dead_image = "ab" * 16, "cd" * 16
    pred = Prediction(
        image_id=image,
        model_name="chexnet",
        model_version=2,
        variant="canary",
        probabilities=tuple(0.9 if label == "Effusion" else 0.1 for label in LABELS),
        latency=Latency(preprocess_ms=1, queue_ms=1, serving_ms=1, end_to_end_ms=3),
        predicted_at_ms=now_ms(),
    )
    letter = DeadLetter(
        source_topic=t.preprocessed,
        source_partition=0,
        source_offset=7,
        key=dead_image,
        reason="serving refused chexnet/canary:\nno such label",
        error_type="ServingError",
        worker="router",
        failed_at_ms=now_ms(),
        payload_b64="",
    )
    producer = make_producer(kafka)
    produce_sync(producer, t.predictions, image, pred.to_bytes())
    produce_sync(producer, t.dlq, letter.key, letter.to_bytes())
    env = {"CHEXSTACK_KAFKA": kafka, "CHEXSTACK_TOPIC_PREFIX": t.prefix}

    code, out, err = finish(start("predictions", "--follow", "--timeout", "6", env=env))
    assert code == 0 and "Traceback" not in err, err
    header, *rows = out.splitlines()
    assert header.split("  ")[0] == "time (UTC)" and "image id" in header and "model:version" in header
    by_image = {row.split()[2]: row for row in rows}
    assert set(by_image) == {image, dead_image}, out
    for row in rows:
        # Each cell starts under its header.
        for name in ("image id", "model:version", "variant"):
            assert row[header.index(name) - 2 : header.index(name)] == "  ", out
    assert by_image[image][header.index("model:version") :].split()[:3] == ["chexnet:2", "canary", "Effusion"]
    dead = by_image[dead_image][header.index("top findings") :]
    assert (
        dead == f"dead letter (router, from {t.preprocessed}): serving refused chexnet/canary: no such label"
    )

    code, out, err = finish(start("predictions", "--follow", "--json", "--timeout", "6", env=env))
    assert code == 0, err
    assert [Prediction.model_validate_json(line) for line in out.splitlines()] == [pred]
