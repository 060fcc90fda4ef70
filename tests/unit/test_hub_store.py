"""The hub database: jobs, projects, label history, persistence, schema versioning, several processes."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from chexstack.hub.store import RERUN_JOB_ENV, SCHEMA_VERSION, Hub, HubError, JobNotFound

SPEC = {"config": {"epochs": 1, "image_size": 64}, "dataset": {"checksum": "ab" * 32}, "image": None}


def test_job_lifecycle_survives_reopen(tmp_path: Path) -> None:
    db = tmp_path / "hub" / "hub.sqlite"
    with Hub.open(db) as hub:
        job = hub.start_job("train", "chexnet", "densenet121-64px", "chexnet", {**SPEC, "path": tmp_path})
        assert hub.get_job(job).status == "running" and hub.get_job(job).started_at is not None
        hub.finish_job(job, "succeeded", {"mean_auroc": 0.93}, model_version=3)
        serve = hub.start_job("serve", "chexnet", "densenet121-64px", "chexnet", {"action": "promote"})
    with Hub.open(db) as hub:  # a new process sees the same state
        got = hub.get_job(job)
        assert (got.status, got.model_version, got.results) == ("succeeded", 3, {"mean_auroc": 0.93})
        assert got.spec["path"] == str(tmp_path) and got.spec["config"] == SPEC["config"]
        assert got.finished_at is not None and got.finished_at >= got.started_at  # type: ignore[operator]
        assert [j.id for j in hub.list_jobs()] == [serve, job]
        assert [j.id for j in hub.list_jobs(kind="train")] == [job]
        assert [j.id for j in hub.list_jobs(limit=1)] == [serve]
        assert hub.producing_job("chexnet", 3).id == job  # type: ignore[union-attr]
        assert hub.producing_job("chexnet", 4) is None
        assert hub.get_job(job[:6]).id == job  # a unique prefix is enough
        (project,) = hub.projects()
        assert project["name"] == "chexnet"
        assert [(v["name"], v["jobs"]) for v in project["variations"]] == [("densenet121-64px", 2)]
        assert sqlite3.connect(db).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_bad_calls_are_refused_with_the_reason(tmp_path: Path) -> None:
    with Hub.open(tmp_path / "hub.sqlite") as hub:
        with pytest.raises(HubError, match="kind must be one of train, serve"):
            hub.start_job("deploy", "p", "v", "chexnet", {})
        with pytest.raises(HubError, match="not JSON serializable"):
            hub.start_job("train", "p", "v", "chexnet", {"x": object()})
        with pytest.raises(HubError, match="non-empty project"):
            hub.start_job("train", "", "v", "chexnet", {})
        job = hub.start_job("train", "p", "v", "chexnet", {})
        with pytest.raises(HubError, match="succeeded or failed"):
            hub.finish_job(job, "done", {})
        with pytest.raises(HubError, match="positive integer"):
            hub.finish_job(job, "succeeded", {}, model_version=0)
        hub.finish_job(job, "failed", {}, error="loss is NaN")
        with pytest.raises(HubError, match="already finished \\(failed\\)"):
            hub.finish_job(job, "succeeded", {})
        with pytest.raises(JobNotFound, match="no job 'nope'"):
            hub.get_job("nope")
        with pytest.raises(JobNotFound):
            hub.finish_job("0" * 12, "failed", {})
        assert hub.get_job(job).error == "loss is NaN"


def test_rerun_child_takes_over_the_queued_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Hub.open(tmp_path / "hub.sqlite") as hub:
        old = hub.start_job("train", "p", "v", "chexnet", SPEC)
        queued = hub.create_job(kind="train", project="p", variation="v", model_name="chexnet", spec=SPEC,
                                rerun_of=old)  # fmt: skip
        assert hub.get_job(queued).status == "queued"
        monkeypatch.setenv(RERUN_JOB_ENV, queued)
        fresh = {**SPEC, "argv": ["train", "--config", "x.yaml"]}
        assert hub.start_job("train", "p", "v", "chexnet", fresh) == queued
        job = hub.get_job(queued)
        assert (job.status, job.rerun_of, job.spec["argv"]) == ("running", old, fresh["argv"])
        # Claimed once: a second start in the same process is a new job.
        assert hub.start_job("train", "p", "v", "chexnet", SPEC) != queued
        with pytest.raises(JobNotFound):
            hub.create_job(kind="train", project="p", variation="v", model_name="m", spec={}, rerun_of="zz")


def test_rollback_target_replays_the_label_history(tmp_path: Path) -> None:
    with Hub.open(tmp_path / "hub.sqlite") as hub:
        assert hub.previous_label_version("chexnet", "stable", 1) is None
        hub.record_label("chexnet", "stable", 2, 1, action="promote")  # stable was 1 before the hub
        hub.record_label("chexnet", "stable", 3, 2, action="promote")
        hub.record_label("chexnet", "canary", 4, None, action="handoff")
        assert hub.previous_label_version("chexnet", "stable", 3) == 2
        hub.record_label("chexnet", "stable", 2, 3, action="rollback")
        assert hub.previous_label_version("chexnet", "stable", 2) == 1
        hub.record_label("chexnet", "stable", 1, 2, action="rollback")
        assert hub.previous_label_version("chexnet", "stable", 1) is None  # nothing older
        assert hub.previous_label_version("chexnet", "canary", 4) is None
        assert [c.version for c in hub.label_history("chexnet", "stable")] == [2, 3, 2, 1]


def test_not_a_hub_and_newer_schema_are_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(HubError, match=r"junk\.sqlite is not a usable hub database"):
        Hub.open(junk)
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(HubError, match="not a hub"):
        Hub.open(other)
    newer = tmp_path / "newer.sqlite"
    Hub.open(newer).close()
    conn = sqlite3.connect(newer)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(HubError, match="newer than this chexstack understands"):
        Hub.open(newer)


_WRITER = """
import sys
from pathlib import Path
from chexstack.hub.store import Hub
hub = Hub.open(Path(sys.argv[1]))
for i in range(25):
    job = hub.start_job("serve", "p", sys.argv[2], "chexnet", {"i": i})
    hub.finish_job(job, "succeeded", {"i": i})
"""


def test_several_processes_write_at_once(tmp_path: Path) -> None:
    db = tmp_path / "hub.sqlite"
    Hub.open(db).close()
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(db), f"w{n}"]) for n in range(3)]
    assert [p.wait(120) for p in procs] == [0, 0, 0]
    with Hub.open(db) as hub:
        jobs = hub.list_jobs(limit=None)
        assert len(jobs) == 75 and {j.status for j in jobs} == {"succeeded"}
        assert sorted(v["name"] for v in hub.projects()[0]["variations"]) == ["w0", "w1", "w2"]
