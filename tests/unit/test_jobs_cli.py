"""`chexstack jobs list`: a header row and the same columns for every kind of job, within 100 columns;
`--json` stays the hub's job records."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from chexstack.cli import app
from chexstack.commands.jobs import COLUMNS
from chexstack.hub.store import Hub


def _hub(path: Path) -> dict[str, str]:
    """A real hub database with one job of each shape `jobs list` summarises; returns their ids."""
    with Hub.open(path) as hub:
        trained = hub.start_job("train", "chexstack", "default", "chexnet", {"config": {"epochs": 1}})
        hub.finish_job(trained, "succeeded", {"mean_auroc": 0.91234, "eval_split": "test"}, model_version=3)
        failed = hub.create_job(kind="train", project="chexstack", variation="default", model_name="chexnet",
                                spec={"config": {}}, rerun_of=trained)  # fmt: skip
        hub.finish_job(
            failed, "failed", {}, error="TrainError: the data set in /data has changed: " + "x" * 200
        )
        promoted = hub.start_job("serve", "chexstack", "default", "chexnet",
                                 {"action": "promote", "label": "stable", "version": 3})  # fmt: skip
        hub.finish_job(promoted, "succeeded", {"applied": True}, model_version=3)
        ab = hub.start_job("serve", "chexstack", "default", "chexnet",
                           {"action": "ab", "weights": {"stable": 90, "canary": 10}})  # fmt: skip
        queued = hub.create_job(kind="train", project="p", variation="v", model_name="chexnet-small",
                                spec={})  # fmt: skip
    return {"trained": trained, "failed": failed, "promoted": promoted, "ab": ab, "queued": queued}


def _list(hub: Path, *args: str) -> tuple[int, str]:
    res = CliRunner().invoke(app, ["jobs", "list", "--hub", str(hub), *args])
    return res.exit_code, res.output


def test_the_table_has_a_header_and_stable_columns(tmp_path: Path) -> None:
    ids = _hub(tmp_path / "hub.sqlite")
    code, out = _list(tmp_path / "hub.sqlite")
    assert code == 0, out
    header, *rows = out.rstrip("\n").split("\n")
    assert header.split() == ["JOB", "KIND", "STATUS", "CREATED", "(UTC)", "MODEL", "SUMMARY"]
    assert len(rows) == 5 and all(len(line) <= 100 for line in [header, *rows])
    # Columns line up: every cell starts where its header does.
    starts = [header.index(name) for name in COLUMNS]
    by_id = {row[:12]: row for row in rows}
    for row in rows:
        assert all(row[s - 2 : s] == "  " and row[s] != " " for s in starts[1:]), row
    cells = {key: [by_id[ids[key]][a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
             for key in ids}  # fmt: skip
    assert cells["trained"][1:3] == ["train", "succeeded"] and cells["trained"][4] == "chexnet v3"
    assert cells["trained"][5] == "AUROC 0.912 (test)"
    assert cells["trained"][3][:2] == "20" and len(cells["trained"][3]) == len("2026-12-06 20:02")
    # The error comes first, shortened to fit (`jobs show` has it all).
    assert cells["failed"][5].startswith("TrainError: the data set in") and cells["failed"][5].endswith("...")
    assert cells["promoted"][1:3] == ["serve", "succeeded"] and cells["promoted"][5] == "promote stable -> v3"
    assert cells["ab"][2] == "running" and cells["ab"][5] == "ab canary=10 stable=90"
    assert cells["queued"][4] == "chexnet-small" and cells["queued"][5] == "-"
    assert rows[0].startswith(ids["queued"])  # newest first


def test_json_is_the_job_records_and_an_empty_hub_says_so(tmp_path: Path) -> None:
    hub = tmp_path / "hub.sqlite"
    assert _list(hub) == (0, "no jobs\n")
    ids = _hub(hub)
    code, out = _list(hub, "--json", "--kind", "train")
    assert code == 0
    records = json.loads(out)
    assert [r["id"] for r in records] == [ids["queued"], ids["failed"], ids["trained"]]
    with Hub.open(hub) as h:
        assert records[2] == h.get_job(ids["trained"]).to_dict()


def test_a_bad_kind_is_one_line(tmp_path: Path) -> None:
    code, out = _list(tmp_path / "hub.sqlite", "--kind", "deploy")
    assert (code, out) == (1, "error: bad --kind 'deploy': use train or serve\n")
