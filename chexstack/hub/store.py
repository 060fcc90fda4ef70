"""The hub database: projects -> model variations -> jobs, plus the history of every version label.

One SQLite file shared by the trainer, the CLI and the API process: WAL lets readers run while one
process writes, the busy timeout makes concurrent writers wait instead of failing, and every write
is one short `BEGIN IMMEDIATE` transaction. The schema version lives in PRAGMA user_version.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

SCHEMA_VERSION: Final = 1
KINDS: Final = ("train", "serve")
STATUSES: Final = ("queued", "running", "succeeded", "failed")
FINISHED: Final = ("succeeded", "failed")
# `jobs rerun` creates a queued job and names it here for the `chexstack train` it starts: that
# process's start_job() then fills in this job instead of creating another one.
RERUN_JOB_ENV: Final = "CHEXSTACK_HUB_RERUN_JOB"
BUSY_TIMEOUT_MS: Final = 30_000

_SCHEMA: Final = """
CREATE TABLE projects (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL
);
CREATE TABLE variations (
    id INTEGER PRIMARY KEY,
    project_id INTEGER NOT NULL REFERENCES projects(id),
    name TEXT NOT NULL,
    created_at TEXT NOT NULL,
    UNIQUE (project_id, name)
);
CREATE TABLE jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    variation_id INTEGER NOT NULL REFERENCES variations(id),
    kind TEXT NOT NULL CHECK (kind IN ('train', 'serve')),
    status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed')),
    model_name TEXT NOT NULL,
    model_version INTEGER,
    spec TEXT NOT NULL,
    results TEXT NOT NULL DEFAULT '{}',
    error TEXT,
    rerun_of TEXT REFERENCES jobs(id),
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT
);
CREATE INDEX jobs_by_model ON jobs (model_name, model_version);
CREATE TABLE label_history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    model_name TEXT NOT NULL,
    label TEXT NOT NULL,
    version INTEGER,
    previous_version INTEGER,
    action TEXT NOT NULL,
    job_id TEXT REFERENCES jobs(id),
    changed_at TEXT NOT NULL
);
CREATE INDEX label_history_by_label ON label_history (model_name, label);
"""


class HubError(RuntimeError):
    """The hub database cannot do what was asked; the message says why."""


class JobNotFound(HubError, LookupError):
    pass


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _json_default(value: object) -> object:
    # Specs are built from configs that often hold paths and numpy scalars.
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    item = getattr(value, "item", None)
    if callable(item):
        return item()
    if isinstance(value, set | frozenset | tuple):
        return sorted(value) if isinstance(value, set | frozenset) else list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def to_json(value: dict[str, Any], what: str) -> str:
    if not isinstance(value, dict):
        raise HubError(f"{what} must be a dict, got {type(value).__name__}")
    try:
        return json.dumps(value, sort_keys=True, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise HubError(f"{what} is not JSON serializable: {exc}") from exc


@dataclass(frozen=True)
class Job:
    id: str
    kind: str
    status: str
    project: str
    variation: str
    model_name: str
    model_version: int | None
    spec: dict[str, Any]
    results: dict[str, Any]
    error: str | None
    rerun_of: str | None
    created_at: str
    started_at: str | None
    finished_at: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LabelChange:
    model_name: str
    label: str
    version: int | None  # None: the label was removed
    previous_version: int | None
    action: str  # promote | rollback | handoff
    job_id: str | None
    changed_at: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_JOB_SELECT: Final = """
SELECT j.id, j.kind, j.status, p.name, v.name, j.model_name, j.model_version, j.spec, j.results,
       j.error, j.rerun_of, j.created_at, j.started_at, j.finished_at
FROM jobs j JOIN variations v ON v.id = j.variation_id JOIN projects p ON p.id = v.project_id
"""


def _job(row: tuple[Any, ...]) -> Job:
    return Job(
        id=row[0],
        kind=row[1],
        status=row[2],
        project=row[3],
        variation=row[4],
        model_name=row[5],
        model_version=row[6],
        spec=json.loads(row[7]),
        results=json.loads(row[8]),
        error=row[9],
        rerun_of=row[10],
        created_at=row[11],
        started_at=row[12],
        finished_at=row[13],
    )


class Hub:
    """A connection to the hub database; thread-safe (the HTTP API shares one across its threads)."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn = conn
        self._lock = threading.RLock()

    @classmethod
    def open(cls, path: Path) -> Hub:
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE) so writers queue up front.
            conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                   check_same_thread=False)  # fmt: skip
        except (OSError, sqlite3.Error) as exc:
            raise HubError(f"cannot open the hub database {path}: {exc}") from exc
        hub = cls(path, conn)
        try:
            hub._setup()
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise HubError(f"{path} is not a usable hub database: {exc}") from exc
        except HubError:
            conn.close()
            raise
        return hub

    def _setup(self) -> None:
        c = self._conn
        c.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        c.execute("PRAGMA foreign_keys = ON")
        mode = c.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise HubError(
                f"{self.path}: SQLite refused WAL mode (got {mode}); is it on a network filesystem?"
            )
        c.execute("PRAGMA synchronous = NORMAL")  # safe with WAL; a crash loses at most the last commit
        with self._tx():
            version = c.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise HubError(
                    f"{self.path} has hub schema version {version}, newer than this chexstack "
                    f"understands ({SCHEMA_VERSION}); upgrade chexstack"
                )
            if version == 0:
                if c.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                    raise HubError(f"{self.path} is an SQLite database but not a hub (no schema version)")
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        c.execute(statement)
                c.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Hub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- jobs ----------------------------------------------------------------------------

    def _variation_id(self, c: sqlite3.Connection, project: str, variation: str) -> int:
        if not project or not variation:
            raise HubError("a job needs a non-empty project and model variation")
        now = now_iso()
        c.execute("INSERT OR IGNORE INTO projects (name, created_at) VALUES (?, ?)", (project, now))
        (project_id,) = c.execute("SELECT id FROM projects WHERE name = ?", (project,)).fetchone()
        c.execute(
            "INSERT OR IGNORE INTO variations (project_id, name, created_at) VALUES (?, ?, ?)",
            (project_id, variation, now),
        )
        row = c.execute(
            "SELECT id FROM variations WHERE project_id = ? AND name = ?", (project_id, variation)
        ).fetchone()
        return int(row[0])

    def create_job(
        self,
        *,
        kind: str,
        project: str,
        variation: str,
        model_name: str,
        spec: dict[str, Any],
        status: str = "queued",
        rerun_of: str | None = None,
    ) -> str:
        """A new job; `queued` unless told otherwise (start_job creates running ones)."""
        if kind not in KINDS:
            raise HubError(f"job kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if status not in ("queued", "running"):
            raise HubError(f"a new job is queued or running, not {status!r}")
        if not model_name:
            raise HubError("a job needs a model name")
        spec_text = to_json(spec, "job spec")
        job_id = uuid.uuid4().hex[:12]
        now = now_iso()
        with self._tx() as c:
            if (
                rerun_of is not None
                and not c.execute("SELECT 1 FROM jobs WHERE id = ?", (rerun_of,)).fetchone()
            ):
                raise JobNotFound(f"no job {rerun_of!r} to rerun")
            c.execute(
                "INSERT INTO jobs (id, variation_id, kind, status, model_name, spec, rerun_of, created_at,"
                " started_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, self._variation_id(c, project, variation), kind, status, model_name, spec_text,
                 rerun_of, now, now if status == "running" else None),
            )  # fmt: skip
        return job_id

    def start_job(
        self, kind: str, project: str, variation: str, model_name: str, spec: dict[str, Any]
    ) -> str:
        """A running job. Inside a `jobs rerun` child process it takes over the rerun's queued job."""
        claim = os.environ.get(RERUN_JOB_ENV)
        if claim:
            claimed = self._claim(claim, kind, project, variation, model_name, spec)
            if claimed:
                return claim
        return self.create_job(
            kind=kind,
            project=project,
            variation=variation,
            model_name=model_name,
            spec=spec,
            status="running",
        )

    def _claim(
        self, job_id: str, kind: str, project: str, variation: str, model_name: str, spec: dict[str, Any]
    ) -> bool:
        spec_text = to_json(spec, "job spec")
        with self._tx() as c:
            cur = c.execute(
                "UPDATE jobs SET status = 'running', started_at = ?, spec = ?, model_name = ?,"
                " variation_id = ? WHERE id = ? AND status = 'queued' AND kind = ?",
                (now_iso(), spec_text, model_name, self._variation_id(c, project, variation), job_id, kind),
            )
            return cur.rowcount == 1

    def finish_job(
        self,
        job_id: str,
        status: str,
        results: dict[str, Any],
        model_version: int | None = None,
        error: str | None = None,
    ) -> None:
        if status not in FINISHED:
            raise HubError(f"a job finishes as {' or '.join(FINISHED)}, not {status!r}")
        if model_version is not None and (not isinstance(model_version, int) or model_version < 1):
            raise HubError(f"model_version must be a positive integer, got {model_version!r}")
        results_text = to_json(results, "job results")
        with self._tx() as c:
            row = c.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise JobNotFound(f"no job {job_id!r}")
            if row[0] in FINISHED:
                raise HubError(f"job {job_id} already finished ({row[0]})")
            c.execute(
                "UPDATE jobs SET status = ?, results = ?, model_version = coalesce(?, model_version),"
                " error = ?, finished_at = ?, started_at = coalesce(started_at, ?) WHERE id = ?",
                (status, results_text, model_version, error, now := now_iso(), now, job_id),
            )

    def get_job(self, job_id: str) -> Job:
        """A job by id, or by a unique prefix of at least 4 characters."""
        with self._lock:
            row = self._conn.execute(_JOB_SELECT + " WHERE j.id = ?", (job_id,)).fetchone()
            if row is None and len(job_id) >= 4 and all(ch in "0123456789abcdef" for ch in job_id):
                rows = self._conn.execute(
                    _JOB_SELECT + " WHERE j.id LIKE ? LIMIT 2", (job_id + "%",)
                ).fetchall()
                if len(rows) > 1:
                    raise JobNotFound(f"job id prefix {job_id!r} is ambiguous")
                row = rows[0] if rows else None
        if row is None:
            raise JobNotFound(f"no job {job_id!r} in the hub {self.path}")
        return _job(row)

    def list_jobs(
        self,
        *,
        kind: str | None = None,
        model_name: str | None = None,
        project: str | None = None,
        status: str | None = None,
        limit: int | None = 50,
    ) -> list[Job]:
        """Newest first."""
        if kind is not None and kind not in KINDS:
            raise HubError(f"job kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if status is not None and status not in STATUSES:
            raise HubError(f"job status must be one of {', '.join(STATUSES)}, got {status!r}")
        if limit is not None and limit < 1:
            raise HubError(f"limit must be positive, got {limit}")
        where, args = [], []  # type: list[str], list[Any]
        for column, value in (("j.kind", kind), ("j.model_name", model_name), ("p.name", project),
                              ("j.status", status)):  # fmt: skip
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        sql = _JOB_SELECT + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY j.seq DESC"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        with self._lock:
            return [_job(r) for r in self._conn.execute(sql, args).fetchall()]

    def producing_job(self, model_name: str, version: int) -> Job | None:
        """The newest successful train job that exported this version."""
        with self._lock:
            row = self._conn.execute(
                _JOB_SELECT + " WHERE j.kind = 'train' AND j.status = 'succeeded' AND j.model_name = ?"
                " AND j.model_version = ? ORDER BY j.seq DESC LIMIT 1",
                (model_name, version),
            ).fetchone()
        return _job(row) if row else None

    def projects(self) -> list[dict[str, Any]]:
        """Each project with its model variations and their job counts."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT p.name, p.created_at, v.name, v.created_at, count(j.seq), max(j.created_at)"
                " FROM projects p LEFT JOIN variations v ON v.project_id = p.id"
                " LEFT JOIN jobs j ON j.variation_id = v.id"
                " GROUP BY p.id, v.id ORDER BY p.name, v.name"
            ).fetchall()
        out: dict[str, dict[str, Any]] = {}
        for pname, pcreated, vname, vcreated, count, last in rows:
            project = out.setdefault(pname, {"name": pname, "created_at": pcreated, "variations": []})
            if vname is not None:
                project["variations"].append(
                    {"name": vname, "created_at": vcreated, "jobs": count, "last_job_at": last}
                )
        return list(out.values())

    # --- version labels ----------------------------------------------------------------

    def record_label(
        self,
        model_name: str,
        label: str,
        version: int | None,
        previous_version: int | None,
        *,
        action: str,
        job_id: str | None = None,
    ) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT INTO label_history (model_name, label, version, previous_version, action, job_id,"
                " changed_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (model_name, label, version, previous_version, action, job_id, now_iso()),
            )

    def label_history(self, model_name: str, label: str | None = None) -> list[LabelChange]:
        """Oldest first."""
        sql = "SELECT model_name, label, version, previous_version, action, job_id, changed_at"
        sql += " FROM label_history WHERE model_name = ?"
        args: list[Any] = [model_name]
        if label is not None:
            sql += " AND label = ?"
            args.append(label)
        with self._lock:
            return [LabelChange(*r) for r in self._conn.execute(sql + " ORDER BY seq", args).fetchall()]

    def previous_label_version(self, model_name: str, label: str, current: int | None) -> int | None:
        """What rollback returns `label` to: the version it had before `current`, skipping rolled-back ones.

        The history is replayed as a stack: a promotion (or hand-off) pushes its version, a rollback pops.
        """
        stack: list[int] = []
        for change in self.label_history(model_name, label):
            if change.action == "rollback":
                if stack:
                    stack.pop()
                continue
            if not stack and change.previous_version is not None:
                stack.append(change.previous_version)  # the label existed before the hub saw it
            if change.version is not None and (not stack or stack[-1] != change.version):
                stack.append(change.version)
        while stack and stack[-1] == current:
            stack.pop()
        return stack[-1] if stack else None
