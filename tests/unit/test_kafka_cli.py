"""`chexstack kafka` says which broker it looked at and refuses what cannot work, in one line.

No broker is started here: these are the cases that must fail before one would be (a bad --kafka, a
port another process holds) or that find none (status, down, topics against a closed port).
tests/integration/test_broker.py covers the same commands with a real broker.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port, free_port_pair


def cli(*args: str, home: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real entry point (`python -m chexstack`), so stderr is exactly what a user sees."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CHEXSTACK_")}
    return subprocess.run(
        [sys.executable, "-m", "chexstack", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**clean, "CHEXSTACK_HOME": str(home), **(env or {})},
    )


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A plain listening socket on 127.0.0.1, as any other program holding a port would be."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", free_port()))
        s.listen()
        yield s


def test_a_development_broker_is_never_bound_beyond_loopback(tmp_path: Path) -> None:
    # This machine's own non-loopback address: bindable, but a broker without logins there would be
    # open to the network.
    addresses = subprocess.run(["hostname", "-I"], capture_output=True, text=True, check=True).stdout.split()
    lan = next(a for a in addresses if ":" not in a and not a.startswith("127."))
    result = cli("kafka", "up", "--kafka", f"{lan}:{free_port_pair()}", home=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "a development broker listens on loopback only" in result.stderr
    assert not (tmp_path / "kafka").exists()


@pytest.mark.parametrize(
    ("kafka", "why"),
    [
        ("127.0.0.1:9092,127.0.0.1:9192", "is a list of brokers"),
        ("127.0.0.1", "is not host:port"),
        ("127.0.0.1:0", "the port must be a number from 1 to 65534"),
        ("127.0.0.1:65535", "the port must be a number from 1 to 65534"),
        ("0.0.0.0:9092", "a wildcard address"),
        ("kafka.invalid:9092", "kafka.invalid is not an address of this machine"),
    ],
)
def test_a_broker_address_that_is_not_one_local_host_port_is_refused(
    tmp_path: Path, kafka: str, why: str
) -> None:
    result = cli("kafka", "status", "--kafka", kafka, home=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith(f"error: --kafka {kafka!r}") and why in result.stderr


@pytest.mark.parametrize("command", ["up", "down"])
def test_up_and_down_refuse_it_before_touching_anything(tmp_path: Path, command: str) -> None:
    result = cli("kafka", command, "--kafka", "127.0.0.1:9092,127.0.0.1:9192", home=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: --kafka '127.0.0.1:9092,127.0.0.1:9192' is a list of brokers")
    assert len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "kafka").exists()  # nothing was started or written


def test_the_removed_port_flags_and_variable_are_gone(tmp_path: Path) -> None:
    assert cli("kafka", "status", "--kafka-port", "9092", home=tmp_path).returncode == 2
    assert cli("kafka", "status", "--port", "9092", home=tmp_path).returncode == 2
    # CHEXSTACK_KAFKA_PORT is no setting any more: the broker's address is CHEXSTACK_KAFKA.
    port = free_port_pair()
    env = {"CHEXSTACK_KAFKA_PORT": "1", "CHEXSTACK_KAFKA": f"127.0.0.1:{port}"}
    env_port = cli("kafka", "status", home=tmp_path, env=env)
    assert env_port.stdout == f"kafka not running in {tmp_path / 'kafka'} (127.0.0.1:{port})\n"


def test_status_and_down_name_the_data_dir_and_address_they_looked_at(tmp_path: Path) -> None:
    port = free_port_pair()
    data = tmp_path / "elsewhere"
    args = ["--kafka-data-dir", str(data), "--kafka", f"127.0.0.1:{port}"]
    status = cli("kafka", "status", *args, home=tmp_path)
    assert (status.returncode, status.stdout) == (1, f"kafka not running in {data} (127.0.0.1:{port})\n")
    down = cli("kafka", "down", *args, home=tmp_path)
    assert (down.returncode, down.stdout) == (0, f"kafka not running in {data} (127.0.0.1:{port})\n")
    # The defaults: $CHEXSTACK_HOME/kafka on 127.0.0.1:9092, and --data-dir is still a spelling.
    default = cli("kafka", "status", "--data-dir", str(data), home=tmp_path)
    assert f"kafka not running in {data} (127.0.0.1:9092)" in default.stdout


def test_status_says_when_another_process_holds_the_port(tmp_path: Path, listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    status = cli("kafka", "status", "--kafka", f"127.0.0.1:{port}", home=tmp_path)
    assert status.returncode == 1
    assert status.stdout == (
        f"kafka not running in {tmp_path / 'kafka'} (127.0.0.1:{port}); "
        f"port {port} on 127.0.0.1 is taken by another process\n"
    )


def test_up_on_a_port_another_process_holds_fails_at_once_naming_it(
    tmp_path: Path, listener: socket.socket
) -> None:
    port = listener.getsockname()[1]
    up = cli("kafka", "up", "--kafka", f"127.0.0.1:{port}", home=tmp_path)
    assert (up.returncode, up.stdout) == (1, "")
    assert up.stderr == f"error: port {port} on 127.0.0.1 is taken by another process\n"
    assert not (tmp_path / "kafka" / "broker.pid").exists()


def test_up_whose_controller_port_is_held_fails_at_once_naming_it(tmp_path: Path) -> None:
    port = free_port_pair()
    controller = port + 1
    with socket.socket() as held:
        held.bind(("127.0.0.1", controller))
        held.listen()
        up = cli("kafka", "up", "--kafka", f"127.0.0.1:{port}", home=tmp_path)
    assert up.returncode == 1
    assert up.stderr.splitlines() == [
        f"error: port {controller} (the KRaft controller's: the client port + 1) on 127.0.0.1 "
        "is taken by another process"
    ]
    assert not (tmp_path / "kafka" / "broker.pid").exists()


def test_topics_against_a_closed_port_is_one_error_line(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    result = cli("kafka", "topics", "--kafka", f"127.0.0.1:{port}", home=tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == f"error: cannot connect to Kafka at 127.0.0.1:{port} (Connection refused)\n"


def test_down_finds_its_broker_by_the_data_dir_whatever_kafka_the_shell_names(tmp_path: Path) -> None:
    # CHEXSTACK_KAFKA as a client sets it for a remote broker: `down` of a local data dir still works,
    # on the address the data dir recorded; with nothing recorded, the bad --kafka is the one error line.
    port = free_port_pair()
    data = tmp_path / "kafka"
    data.mkdir()
    (data / "server.properties").write_text(f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}\n")
    remote = {"CHEXSTACK_KAFKA": "kafka:9092"}
    result = cli("kafka", "down", "--kafka-data-dir", str(data), home=tmp_path, env=remote)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"kafka not running in {data} (127.0.0.1:{port})"
    empty = tmp_path / "empty"
    result = cli("kafka", "down", "--kafka-data-dir", str(empty), home=tmp_path, env=remote)
    assert result.returncode == 2
    assert result.stderr.startswith("error: --kafka 'kafka:9092'") and "Traceback" not in result.stderr
