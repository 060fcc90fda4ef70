"""A short CPU training on synthetic radiographs: it learns, resumes, exports, serves, logs to TensorBoard.

One module fixture trains once (in two runs: epoch 1, then resumed to the last epoch through the CLI with the
hub recording the job), and every test checks one outcome of that job. 64x64 images keep DenseNet-121
fast enough on two CPU cores; at that size the large findings are visible, the small ones (nodules,
fine reticulation) are not, so the AUROC bar applies to the large ones.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import yaml

from tests.conftest import free_port
from tests.integration.conftest import ServeProcess, sample_pixels

pytestmark = pytest.mark.integration

IMAGE_SIZE = 64
EPOCHS = 4
# Findings that change large areas of the picture (heart size, diaphragm height, basal fluid, perihilar
# density, hyperlucency, the retrocardiac gas bubble) and so survive downscaling to 64x64 and are learnt
# within 4 short epochs; chexstack.synth draws the others small (nodule, mass) or as fine texture.
LEARNABLE = ("Atelectasis", "Cardiomegaly", "Effusion", "Edema", "Emphysema", "Hernia")
MIN_MEAN_AUROC = 0.9


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from typer.testing import CliRunner

    from chexstack.cli import app
    from chexstack.datasets import prepare
    from chexstack.hub.store import Hub
    from chexstack.synth import synthesize
    from chexstack.training.config import load_config
    from chexstack.training.run import run_training

    root = tmp_path_factory.mktemp("train")
    # ~290 train images (training time), and a larger test split so each class has enough positives.
    synthesize(root / "raw", 480, seed=11, size=128, dicom_fraction=0.0)
    dataset, _ = prepare(root / "raw", root / "shards", key=b"test-key" * 4, image_size=IMAGE_SIZE,
                         val_fraction=0.15, test_fraction=0.25, workers=1)  # fmt: skip
    settings = {
        "data_dir": str(root / "shards"), "epochs": EPOCHS, "seed": 3, "job_dir": str(root / "job"),
        "logs_dir": str(root / "logs"), "model_base_path": str(root / "models" / "chexnet"),
        # ~60 steps in all: BatchNorm's moving statistics must settle that fast
        "sample_images": 2, "bn_momentum": 0.9,
    }  # fmt: skip
    # Run 1 stops after epoch 1 as an interrupted job would; nothing exported yet.
    first = run_training(load_config(None, {**settings, "epochs": 1, "export": False}))
    # Run 2: the same job through the CLI, with its config as YAML and the hub recording it.
    config_file = root / "train.yaml"
    config_file.write_text(yaml.safe_dump(settings))
    hub_path = root / "hub.sqlite"
    res = CliRunner().invoke(app, ["train", "--config", str(config_file), "--hub", str(hub_path)])
    assert res.exit_code == 0, f"{res.output}\n{res.exception!r}"
    hub = Hub.open(hub_path)
    (hub_job,) = hub.list_jobs(kind="train")
    return {
        "root": root, "first": first, "dataset": dataset, "output": res.output, "hub_job": hub_job,
        "state": json.loads((root / "job" / "state.json").read_text()),
        "report": json.loads((root / "job" / "report.json").read_text()),
        "model_base": root / "models" / "chexnet", "steps_per_epoch": -(-len(dataset.split("train")) // 16),
    }  # fmt: skip


def test_short_training_learns_the_visible_findings(job: dict[str, Any]) -> None:
    report = job["report"]
    per_class = {row["label"]: row["auroc"] for row in report["per_class"]}
    learnable = [per_class[k] for k in LEARNABLE]
    mean = float(np.mean(learnable))
    print(f"test-split AUROC after {EPOCHS} epochs: {per_class}; learnable mean {mean:.4f}")
    assert report["split"] == "test" and report["images"] == len(job["dataset"].split("test"))
    assert mean >= MIN_MEAN_AUROC, per_class


def test_resume_continues_at_the_next_epoch_with_the_optimizer_state(job: dict[str, Any]) -> None:
    first, state, steps = job["first"], job["state"], job["steps_per_epoch"]
    assert first["epochs"] == 1 and first["initial_epoch"] == 0 and first["epochs_run"] == [1]
    assert first["optimizer_iterations"] == steps
    results = job["hub_job"].results
    assert results["initial_epoch"] == 1 and results["epochs"] == EPOCHS  # started at epoch 2
    # The optimizer's step count went on from the checkpoint instead of restarting at 0.
    assert state["epoch"] == EPOCHS and state["optimizer_iterations"] == EPOCHS * steps
    assert state["learning_rate"] > 0 and (job["root"] / "job" / "best.weights.h5").is_file()
    leftovers = sorted(p.name for p in (job["root"] / "job").glob("last-*"))
    assert leftovers == [f"last-{EPOCHS:05d}.optimizer.npz", f"last-{EPOCHS:05d}.weights.h5"]


def test_hub_records_the_job_with_its_spec_and_results(job: dict[str, Any]) -> None:
    hub_job = job["hub_job"]
    assert hub_job.status == "succeeded" and hub_job.model_version == 1
    spec = hub_job.spec
    assert spec["config"]["epochs"] == EPOCHS and spec["config"]["image_size"] is None
    assert spec["dataset"]["checksum"] == job["dataset"].checksum
    # The effective config: what a rerun needs to find the same data and model base from anywhere.
    assert spec["config"]["dataset_checksum"] == job["dataset"].checksum
    assert spec["config"]["model_base_path"] == str(job["model_base"])
    assert spec["dataset"]["counts"]["train"] == len(job["dataset"].split("train"))
    assert spec["environment"]["backend"] == "tensorflow" and spec["environment"]["xla"] is False
    assert spec["code_version"].startswith("0.1.0") and isinstance(spec["argv"], list)
    assert hub_job.results["mean_auroc"] == job["report"]["mean_auroc"]
    assert hub_job.results["exported_version"] == 1


def test_report_puts_each_class_next_to_the_paper(job: dict[str, Any]) -> None:
    report = job["report"]
    rows = {row["label"]: row for row in report["per_class"]}
    assert rows["Cardiomegaly"]["chexnet"] == 0.9248 and rows["Hernia"]["chexnet"] == 0.9164
    assert report["model_version"] == 1 and report["epochs"] == EPOCHS
    md = (job["root"] / "job" / "report.md").read_text()
    assert "| Cardiomegaly |" in md and "0.9248" in md and "Rajpurkar" in md


def test_export_metadata_records_the_trained_size_and_job(job: dict[str, Any]) -> None:
    meta = json.loads((job["model_base"] / "1" / "assets.extra" / "chexstack.json").read_text())
    assert meta["image_size"] == 224 and meta["trained_image_size"] == IMAGE_SIZE
    assert meta["training"]["dataset"]["checksum"] == job["dataset"].checksum
    assert meta["training"]["epochs"] == EPOCHS and meta["training"]["config"]["seed"] == 3


def test_serve_answers_serving_default_and_explain(job: dict[str, Any], serve_factory: Any) -> None:
    server: ServeProcess = serve_factory(model_base=job["model_base"])
    pixels = sample_pixels(2, seed=4)
    url = f"{server.rest_url}/v1/models/chexnet:predict"
    plain = requests.post(url, json={"instances": pixels.tolist()}, timeout=60)
    assert plain.status_code == 200, plain.text
    probs = np.asarray(plain.json()["predictions"], dtype=np.float32)
    explained = requests.post(url, json={"signature_name": "explain", "inputs": pixels.tolist()}, timeout=60)
    assert explained.status_code == 200, explained.text
    outputs = explained.json()["outputs"]
    cams = np.asarray(outputs["class_activation_maps"], dtype=np.float32)
    side = IMAGE_SIZE // 32
    assert probs.shape == (2, 14) and cams.shape == (2, side, side, 14)
    np.testing.assert_allclose(np.asarray(outputs["probabilities"]), probs, atol=1e-5)
    assert cams.min() >= 0.0 and cams.max() <= 1.0
    np.testing.assert_allclose(cams.max(axis=(1, 2)), 1.0, atol=1e-6)  # normalised per image and class

    # gRPC: the same signature through TF Serving's PredictionService.
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "chexnet"
    request.model_spec.signature_name = "explain"
    request.inputs["image"].CopyFrom(tf.make_tensor_proto(pixels))
    with grpc.insecure_channel(server.grpc_target) as channel:
        reply = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=60)
    assert set(reply.outputs) == {"probabilities", "class_activation_maps"}
    np.testing.assert_allclose(tf.make_ndarray(reply.outputs["class_activation_maps"]), cams, atol=1e-5)


def test_tensorboard_lists_the_runs_scalars(job: dict[str, Any], tmp_path: Path) -> None:
    port = free_port()
    log = (tmp_path / "tensorboard.log").open("wb")
    cmd = [str(Path(sys.executable).parent / "tensorboard"), "--logdir", str(job["root"] / "logs"),
           "--port", str(port), "--host", "127.0.0.1", "--reload_interval", "1"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        run = Path(job["hub_job"].results["run_dir"]).name
        tags: dict[str, Any] = {}
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and "auroc/mean" not in tags:
            assert proc.poll() is None, (tmp_path / "tensorboard.log").read_text()
            with contextlib.suppress(requests.RequestException):
                reply = requests.get(f"http://127.0.0.1:{port}/data/plugin/scalars/tags", timeout=5)
                tags = reply.json().get(run, {})
            time.sleep(0.5)
        assert {"auroc/mean", "auroc/Cardiomegaly", "loss/train", "loss/val", "learning_rate"} <= set(tags)
        points = requests.get(f"http://127.0.0.1:{port}/data/plugin/scalars/scalars",
                              params={"run": run, "tag": "auroc/mean"}, timeout=10).json()  # fmt: skip
        assert [p[1] for p in points] == list(range(EPOCHS))  # one point per epoch, both runs
        images = requests.get(f"http://127.0.0.1:{port}/data/plugin/images/tags", timeout=10).json()
        assert "cam/sample_0" in images.get(run, {})
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_corrupt_resume_state_fails_the_hub_job_with_the_reason(job: dict[str, Any], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from chexstack.cli import app
    from chexstack.hub.store import Hub

    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "state.json").write_text("{not json")
    hub_path = tmp_path / "hub.sqlite"
    res = CliRunner().invoke(app, ["train", "--data-dir", str(job["root"] / "shards"), "--job-dir",
                                   str(tmp_path / "job"), "--hub", str(hub_path)])  # fmt: skip
    assert res.exit_code == 1
    assert "state.json: corrupt resume state" in res.output
    (failed,) = Hub.open(hub_path).list_jobs(kind="train")
    assert failed.status == "failed" and "corrupt resume state" in (failed.error or "")


def test_batches_shuffle_per_epoch_with_seed_and_flip_horizontally(tmp_path: Path) -> None:
    """ShardBatches over real shards: every image once per epoch, a new seeded order each epoch,
    a resumed dataset (epoch=1) repeats epoch 1's batches, and flips mirror the pixels exactly."""
    from chexstack.shards import finish_dataset, write_shards
    from chexstack.training.data import ShardBatches

    n, size = 37, 8
    # Image i holds the value i at its left edge only, so its id and its flip state are readable.
    samples = []
    for i in range(n):
        img = np.zeros((size, size), np.uint8)
        img[:, 0] = i
        samples.append((f"img{i}.png", f"p{i}", img, np.eye(14, dtype=np.uint8)[i % 14]))
    shards = write_shards(tmp_path, "train", samples, size, shard_size=10)
    reader = finish_dataset(
        tmp_path, size, {"train": {"shards": shards}}, {"kind": "manifest", "path": "x"}, []
    )
    train = reader.split("train")

    def epoch_ids(data: ShardBatches) -> tuple[list[int], int]:
        ids, flipped = [], 0
        for b in range(len(data)):
            images, labels = data[b]
            assert images.dtype == np.uint8 and images.shape[1:] == (size, size, 1)
            for img, lab in zip(images[..., 0], labels, strict=True):
                left, right = int(img[0, 0]), int(img[0, -1])
                assert (left == 0) != (right == 0) or left == right == 0
                ident = max(left, right)
                flipped += right > 0
                assert lab.argmax() == ident % 14 and lab.dtype == np.float32
                ids.append(ident)
        return ids, flipped

    data = ShardBatches(train, 8, training=True, seed=5)
    assert len(data) == 5
    first, flips = epoch_ids(data)
    assert sorted(first) == list(range(n)) and 0 < flips < n
    data.on_epoch_end()
    second, _ = epoch_ids(data)
    assert sorted(second) == list(range(n)) and second != first
    resumed, _ = epoch_ids(ShardBatches(train, 8, training=True, seed=5, epoch=1))
    assert resumed == second
    plain, flips = epoch_ids(ShardBatches(train, 8, training=False))
    assert plain == list(range(n)) and flips == 0
    assert len(ShardBatches(train, 8, training=True, max_steps=2)) == 2


def _chexstack(args: list[str], cwd: Path, home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHEXSTACK_")}
    env["CHEXSTACK_HOME"] = str(home)  # default job dirs there, not in the user's home
    return subprocess.run([sys.executable, "-m", "chexstack", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip


def test_rerun_from_another_directory_trains_the_same_data_into_the_same_model_base(tmp_path: Path) -> None:
    """A job started with relative paths (a job.yaml's and a flag's) is rerun from another directory:
    the rerun reads the same shards and exports into the same model base; once the data set has been
    prepared again (new checksum) a rerun refuses, and the hub says why."""
    from chexstack.datasets import prepare
    from chexstack.hub.store import Hub
    from chexstack.synth import synthesize

    project, elsewhere, home = tmp_path / "project", tmp_path / "elsewhere", tmp_path / "home"
    elsewhere.mkdir()
    synthesize(tmp_path / "raw", 40, seed=5, size=64, dicom_fraction=0.0)
    key = b"test-key" * 4
    dataset, _ = prepare(tmp_path / "raw", project / "shards", key=key, image_size=32, val_fraction=0.2,
                         test_fraction=0.2, workers=1)  # fmt: skip
    # Tiny and short: 32x32 images, one step of 4, no CAM samples; the paths are under test, not learning.
    (project / "job.yaml").write_text(
        "data_dir: shards\nmodel_base_path: models/chexnet\nlogs_dir: logs\nepochs: 1\nbatch_size: 4\n"
        "max_steps_per_epoch: 1\nsample_images: 0\nworkers: 1\n"
    )
    hub_path = tmp_path / "hub" / "hub.sqlite"
    first = _chexstack(
        ["train", "--config", "job.yaml", "--job-dir", "job", "--hub", str(hub_path)], project, home
    )
    assert first.returncode == 0, first.stderr
    with Hub.open(hub_path) as hub:
        (original,) = hub.list_jobs(kind="train")
    config = original.spec["config"]
    assert config["data_dir"] == str(project / "shards") and config["job_dir"] == str(project / "job")
    assert config["model_base_path"] == str(project / "models" / "chexnet")
    assert config["logs_dir"] == str(project / "logs") and config["dataset_checksum"] == dataset.checksum
    assert original.model_version == 1 and (project / "models" / "chexnet" / "1").is_dir()

    again = _chexstack(["jobs", "rerun", original.id, "--hub", str(hub_path)], elsewhere, home)
    assert again.returncode == 0, again.stderr
    with Hub.open(hub_path) as hub:
        rerun = hub.list_jobs(kind="train")[0]
    assert rerun.rerun_of == original.id and rerun.status == "succeeded" and rerun.model_version == 2
    assert rerun.spec["dataset"]["checksum"] == dataset.checksum
    assert rerun.spec["dataset"]["path"] == str(project / "shards")
    assert (project / "models" / "chexnet" / "2").is_dir()
    assert list(elsewhere.iterdir()) == []  # nothing was read from or written to the rerun's cwd

    # The data set is prepared again (another split): same place, new checksum. The rerun refuses.
    changed, _ = prepare(tmp_path / "raw", project / "shards", key=key, image_size=32, val_fraction=0.2,
                         test_fraction=0.2, seed=1, workers=1, force=True)  # fmt: skip
    assert changed.checksum != dataset.checksum
    refused = _chexstack(["jobs", "rerun", original.id, "--hub", str(hub_path)], elsewhere, home)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert f"the data set in {project / 'shards'} has changed" in refused.stderr
    with Hub.open(hub_path) as hub:
        failed = hub.list_jobs(kind="train")[0]
    assert (
        failed.status == "failed" and "has changed" in (failed.error or "") and failed.model_version is None
    )
    assert not (project / "models" / "chexnet" / "3").exists()
