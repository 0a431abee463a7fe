"""History: every probe, trace, plan and relay decision, in SQLite (stdlib sqlite3, WAL).

The schema version lives in ``PRAGMA user_version``; ``MIGRATIONS`` upgrades older files in
order, one transaction each. A file that is not SQLite, is not ours, or has a newer schema raises
StoreError with a one-line message; nothing is ever overwritten.

Read methods return plain records (lists of dicts, one per row) so an analysis module can build a
DataFrame with ``pandas.DataFrame.from_records(store.ping_samples())`` without knowing SQL.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from linkscope.errors import InputError, StoreError
from linkscope.probe.models import ProbeResult, Trace

SCHEMA_VERSION = 1

MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        """
        CREATE TABLE probe_runs (
            id INTEGER PRIMARY KEY,
            target TEXT NOT NULL,
            address TEXT,
            started_at REAL NOT NULL,
            method TEXT,
            sent INTEGER,
            received INTEGER,
            loss REAL,
            rtt_p50_ms REAL,
            verdict TEXT,
            interrupted INTEGER NOT NULL DEFAULT 0,
            result_json TEXT NOT NULL
        );
        CREATE INDEX probe_runs_target ON probe_runs (target, started_at);
        CREATE INDEX probe_runs_started ON probe_runs (started_at);
        CREATE TABLE ping_samples (
            run_id INTEGER NOT NULL REFERENCES probe_runs (id) ON DELETE CASCADE,
            seq INTEGER NOT NULL,
            rtt_ms REAL,
            PRIMARY KEY (run_id, seq)
        );
        CREATE TABLE tcp_attempts (
            run_id INTEGER NOT NULL REFERENCES probe_runs (id) ON DELETE CASCADE,
            port INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            method TEXT NOT NULL,
            status TEXT NOT NULL,
            rtt_ms REAL,
            PRIMARY KEY (run_id, port, seq)
        );
        CREATE TABLE traces (
            id INTEGER PRIMARY KEY,
            run_id INTEGER REFERENCES probe_runs (id) ON DELETE CASCADE,
            target TEXT NOT NULL,
            address TEXT,
            started_at REAL NOT NULL,
            protocol TEXT NOT NULL,
            port INTEGER,
            probes INTEGER,
            reached INTEGER NOT NULL,
            duration_s REAL,
            trace_json TEXT NOT NULL
        );
        CREATE INDEX traces_target ON traces (target, started_at);
        CREATE TABLE hops (
            trace_id INTEGER NOT NULL REFERENCES traces (id) ON DELETE CASCADE,
            ttl INTEGER NOT NULL,
            address TEXT,
            name TEXT,
            sent INTEGER NOT NULL,
            received INTEGER NOT NULL,
            loss REAL,
            rtt_min_ms REAL,
            rtt_p50_ms REAL,
            rtt_max_ms REAL,
            jitter_ms REAL,
            country TEXT,
            city TEXT,
            asn INTEGER,
            org TEXT,
            lat REAL,
            lon REAL,
            PRIMARY KEY (trace_id, ttl)
        );
        CREATE TABLE plans (
            id INTEGER PRIMARY KEY,
            plan_id INTEGER NOT NULL,
            created_at REAL NOT NULL,
            model TEXT NOT NULL,
            target TEXT NOT NULL,
            rank INTEGER NOT NULL,
            hops TEXT NOT NULL,
            rtt_ms REAL,
            loss REAL,
            cost REAL,
            gain REAL,
            direct_rtt_ms REAL,
            direct_loss REAL,
            direct_cost REAL,
            UNIQUE (plan_id, rank)
        );
        CREATE INDEX plans_target ON plans (target, created_at);
        CREATE TABLE relay_decisions (
            id INTEGER PRIMARY KEY,
            at REAL NOT NULL,
            chain TEXT NOT NULL,
            reason TEXT NOT NULL,
            predicted_json TEXT,
            observed_json TEXT
        );
        CREATE INDEX relay_decisions_at ON relay_decisions (at);
        """,
    ),
)
assert MIGRATIONS[-1][0] == SCHEMA_VERSION

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def default_path() -> Path:
    """``$XDG_DATA_HOME/linkscope/history.db`` (``~/.local/share/linkscope/history.db``)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local/share")
    return Path(base) / "linkscope" / "history.db"


def parse_since(text: str, now: float | None = None) -> float:
    """Unix time from ``1h``/``30m``/``2d``/``1w``/``90s`` (ago) or an ISO date/datetime.

    A date or datetime without a zone is local time. Raises InputError otherwise.
    """
    now = time.time() if now is None else now
    text = text.strip()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhdw])", text)
    if m:
        return now - float(m.group(1)) * _UNITS[m.group(2)]
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise InputError(
            f"--since: cannot read {text!r}; use an ISO date (2026-11-25, "
            "2026-11-25T10:00) or an age like 30m, 1h, 2d, 1w"
        ) from None


@dataclass(frozen=True, slots=True)
class Run:
    """One row of ``linkscope history``: a probe, or a trace made on its own."""

    kind: str  # "probe" | "trace"
    id: int
    target: str
    address: str | None
    started_at: float
    loss: float | None
    rtt_p50_ms: float | None
    reached: bool | None
    hops: int | None
    verdict: str | None
    interrupted: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "id": self.id,
            "target": self.target,
            "address": self.address,
            "started_at": self.started_at,
            "started": datetime.fromtimestamp(self.started_at)
            .astimezone()
            .isoformat(timespec="seconds"),
            "loss": None if self.loss is None else round(self.loss, 4),
            "rtt_p50_ms": None if self.rtt_p50_ms is None else round(self.rtt_p50_ms, 3),
            "reached": self.reached,
            "hops": self.hops,
            "verdict": self.verdict,
            "interrupted": self.interrupted,
        }


class Store:
    """The history database. ``Store.open(None)`` uses the default path; use it as a context
    manager (``with Store.open(path) as store: ...``) so the connection is closed."""

    def __init__(self, path: str | os.PathLike[str], *, make_dirs: bool = False) -> None:
        """``make_dirs``: create the missing directories above ``path`` (for the default
        path); a path the user gave must be in a directory that exists (a typo in ``--db``
        must not create directories)."""
        self.path = Path(path)
        if not make_dirs and not self.path.parent.is_dir():
            raise StoreError(
                f"cannot open history database {self.path}: "
                f"directory {self.path.parent} does not exist"
            )
        try:
            if make_dirs:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=10.0)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open history database {self.path}: {exc}") from exc
        self._db.row_factory = sqlite3.Row
        try:
            self._prepare()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise StoreError(
                f"history database {self.path} is corrupt or not SQLite ({exc}); "
                "move it away or use --db"
            ) from exc
        except StoreError:
            self._db.close()
            raise

    @classmethod
    def open(cls, path: str | os.PathLike[str] | None = None) -> Store:
        """``path``, or the default path (its directories created as needed)."""
        return cls(default_path(), make_dirs=True) if path is None else cls(path)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    # -- schema -----------------------------------------------------------------------------
    def _prepare(self) -> None:
        db = self._db
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"history database {self.path} has schema version {version}, newer than this "
                f"linkscope understands ({SCHEMA_VERSION}); upgrade linkscope or use another --db"
            )
        if version == 0:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if tables:
                raise StoreError(
                    f"{self.path} is an SQLite database but not a linkscope history "
                    f"(tables: {', '.join(sorted(tables)[:5])}); use another --db"
                )
        db.execute("PRAGMA busy_timeout = 10000")
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"history database {self.path}: cannot enable WAL (mode {mode})")
        db.execute("PRAGMA synchronous = NORMAL")  # WAL: durable at checkpoints, never corrupt
        db.execute("PRAGMA foreign_keys = ON")
        for target, script in MIGRATIONS:
            if version < target:
                self._migrate(target, script)
                version = target

    def _migrate(self, target: int, script: str) -> None:
        """Apply one migration atomically (executescript would commit halfway)."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(script):
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {int(target)}")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    @property
    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def _write(self, fn: Any, *args: Any) -> int:
        try:
            with self._db:
                return int(fn(*args))
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"history database {self.path}: {exc}") from exc

    # -- writing ----------------------------------------------------------------------------
    def record_probe(self, result: ProbeResult) -> int:
        """Store a probe (its ping samples, TCP attempts and trace too); returns the run id."""
        return self._write(self._record_probe, result)

    def _record_probe(self, result: ProbeResult) -> int:
        ping = result.ping
        cur = self._db.execute(
            "INSERT INTO probe_runs (target, address, started_at, method, sent, received, loss,"
            " rtt_p50_ms, verdict, interrupted, result_json) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                result.target,
                result.address,
                result.started_at or time.time(),
                ping.method,
                ping.sent,
                ping.received,
                ping.loss,
                ping.rtt_p50_ms,
                result.verdict,
                int(result.interrupted),
                json.dumps(result.to_dict()),
            ),
        )
        run_id = int(cur.lastrowid or 0)
        self._db.executemany(
            "INSERT INTO ping_samples (run_id, seq, rtt_ms) VALUES (?,?,?)",
            [(run_id, seq, rtt) for seq, rtt in enumerate(ping.rtts)],
        )
        self._db.executemany(
            "INSERT INTO tcp_attempts (run_id, port, seq, method, status, rtt_ms)"
            " VALUES (?,?,?,?,?,?)",
            [
                (run_id, t.port, seq, t.method, a.status, a.rtt_ms)
                for t in result.tcp
                for seq, a in enumerate(t.attempts)
            ],
        )
        if result.trace is not None:
            self._record_trace(result.trace, result.target, run_id, result.started_at)
        return run_id

    def record_trace(self, trace: Trace, target: str | None = None) -> int:
        """Store a trace made on its own (``linkscope trace``); returns the trace id."""
        return self._write(self._record_trace, trace, target or trace.target, None, None)

    def _record_trace(
        self, trace: Trace, target: str, run_id: int | None, started_at: float | None
    ) -> int:
        cur = self._db.execute(
            "INSERT INTO traces (run_id, target, address, started_at, protocol, port, probes,"
            " reached, duration_s, trace_json) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
                run_id,
                target,
                trace.address,
                started_at or time.time(),
                trace.protocol,
                trace.port,
                trace.probes,
                int(trace.reached),
                trace.duration_s,
                json.dumps(trace.to_dict()),
            ),
        )
        trace_id = int(cur.lastrowid or 0)
        self._db.executemany(
            "INSERT INTO hops (trace_id, ttl, address, name, sent, received, loss, rtt_min_ms,"
            " rtt_p50_ms, rtt_max_ms, jitter_ms, country, city, asn, org, lat, lon)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            [
                (
                    trace_id,
                    h.ttl,
                    h.address,
                    h.name,
                    h.sent,
                    h.received,
                    h.loss,
                    h.rtt_min_ms,
                    h.rtt_p50_ms,
                    h.rtt_max_ms,
                    h.jitter_ms,
                    h.country,
                    h.city,
                    h.asn,
                    h.org,
                    h.lat,
                    h.lon,
                )
                for h in trace.hops
            ],
        )
        return trace_id

    def record_plan(self, plan: Mapping[str, Any], created_at: float | None = None) -> int:
        """Store a plan (DESIGN.md's plan JSON); returns the plan id.

        One row per ranked chain (rank 1 = best), plus rank 0 for the direct path itself, so a
        plan that found no chain is still recorded. ``hops`` is the chain's names, comma-joined.
        """
        try:
            model = str(plan["model"])
            target = str(plan["target"])
            direct = plan.get("direct") or {}
            chains: Sequence[Mapping[str, Any]] = plan.get("chains") or ()
        except (KeyError, TypeError, AttributeError) as exc:
            raise InputError(f"plan lacks field {exc}") from exc
        return self._write(self._record_plan, model, target, direct, chains, created_at)

    def _record_plan(
        self,
        model: str,
        target: str,
        direct: Mapping[str, Any],
        chains: Sequence[Mapping[str, Any]],
        created_at: float | None,
    ) -> int:
        next_id = self._db.execute("SELECT COALESCE(MAX(plan_id), 0) + 1 FROM plans").fetchone()
        plan_id = int(next_id[0])
        when = time.time() if created_at is None else created_at
        d = (direct.get("rtt_ms"), direct.get("loss"), direct.get("cost"))
        rows: list[tuple[Any, ...]] = [(plan_id, when, model, target, 0, "", *d, 0.0, *d)]
        for rank, chain in enumerate(chains, start=1):
            hops = chain.get("hops") or ()
            rows.append(
                (
                    plan_id,
                    when,
                    model,
                    target,
                    rank,
                    ",".join(str(h) for h in hops),
                    chain.get("rtt_ms"),
                    chain.get("loss"),
                    chain.get("cost"),
                    chain.get("gain"),
                    *d,
                )
            )
        self._db.executemany(
            "INSERT INTO plans (plan_id, created_at, model, target, rank, hops, rtt_ms, loss,"
            " cost, gain, direct_rtt_ms, direct_loss, direct_cost)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            rows,
        )
        return plan_id

    def record_decision(
        self,
        chain: Sequence[str] | str,
        reason: str,
        predicted: Mapping[str, Any] | None = None,
        observed: Mapping[str, Any] | None = None,
        at: float | None = None,
    ) -> int:
        """Store one ``relay --auto`` decision (switch, failover, keep); returns its id."""
        text = chain if isinstance(chain, str) else ",".join(chain)
        return self._write(self._record_decision, text, reason, predicted, observed, at)

    def _record_decision(
        self,
        chain: str,
        reason: str,
        predicted: Mapping[str, Any] | None,
        observed: Mapping[str, Any] | None,
        at: float | None,
    ) -> int:
        cur = self._db.execute(
            "INSERT INTO relay_decisions (at, chain, reason, predicted_json, observed_json)"
            " VALUES (?,?,?,?,?)",
            (
                time.time() if at is None else at,
                chain,
                reason,
                None if predicted is None else json.dumps(dict(predicted)),
                None if observed is None else json.dumps(dict(observed)),
            ),
        )
        return int(cur.lastrowid or 0)

    # -- reading ----------------------------------------------------------------------------
    def records(self, sql: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        """Rows of any SELECT as dicts (for analysis code that needs its own query)."""
        try:
            return [dict(r) for r in self._db.execute(sql, tuple(params))]
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"history database {self.path}: {exc}") from exc

    @staticmethod
    def _filter(
        time_col: str, target: str | None, since: float | None, target_cols: Sequence[str]
    ) -> tuple[str, list[Any]]:
        where: list[str] = []
        params: list[Any] = []
        if target is not None:
            where.append("(" + " OR ".join(f"{c} = ?" for c in target_cols) + ")")
            params += [target] * len(target_cols)
        if since is not None:
            where.append(f"{time_col} >= ?")
            params.append(since)
        return (" WHERE " + " AND ".join(where)) if where else "", params

    def runs(
        self, target: str | None = None, since: float | None = None, kind: str | None = None
    ) -> list[Run]:
        """Probes and standalone traces, oldest first; ``target`` matches a name or address."""
        out: list[Run] = []
        if kind in (None, "probe"):
            where, params = self._filter("r.started_at", target, since, ("r.target", "r.address"))
            for r in self.records(
                "SELECT r.*, t.reached AS reached, (SELECT COUNT(*) FROM hops h"
                " WHERE h.trace_id = t.id) AS nhops FROM probe_runs r"
                f" LEFT JOIN traces t ON t.run_id = r.id{where}",
                params,
            ):
                out.append(
                    Run(
                        kind="probe",
                        id=r["id"],
                        target=r["target"],
                        address=r["address"],
                        started_at=r["started_at"],
                        loss=r["loss"],
                        rtt_p50_ms=r["rtt_p50_ms"],
                        reached=None if r["reached"] is None else bool(r["reached"]),
                        hops=r["nhops"] if r["reached"] is not None else None,
                        verdict=r["verdict"],
                        interrupted=bool(r["interrupted"]),
                    )
                )
        if kind in (None, "trace"):
            where, params = self._filter("started_at", target, since, ("target", "address"))
            where = (where + " AND" if where else " WHERE") + " run_id IS NULL"
            for r in self.records(
                "SELECT t.*, (SELECT COUNT(*) FROM hops h WHERE h.trace_id = t.id) AS nhops,"
                " (SELECT rtt_p50_ms FROM hops h WHERE h.trace_id = t.id ORDER BY ttl DESC"
                " LIMIT 1) AS last_p50, (SELECT loss FROM hops h WHERE h.trace_id = t.id"
                f" ORDER BY ttl DESC LIMIT 1) AS last_loss FROM traces t{where}",
                params,
            ):
                out.append(
                    Run(
                        kind="trace",
                        id=r["id"],
                        target=r["target"],
                        address=r["address"],
                        started_at=r["started_at"],
                        loss=r["last_loss"] if r["reached"] else None,
                        rtt_p50_ms=r["last_p50"] if r["reached"] else None,
                        reached=bool(r["reached"]),
                        hops=r["nhops"],
                        verdict=None,
                        interrupted=False,
                    )
                )
        out.sort(key=lambda run: (run.started_at, run.kind, run.id))
        return out

    def probe(self, run_id: int) -> ProbeResult:
        """A stored probe as the ProbeResult it was."""
        rows = self.records("SELECT result_json FROM probe_runs WHERE id = ?", (run_id,))
        if not rows:
            raise InputError(f"no probe run {run_id} in {self.path}")
        return ProbeResult.from_dict(json.loads(rows[0]["result_json"]))

    def trace(self, trace_id: int) -> Trace:
        rows = self.records("SELECT trace_json FROM traces WHERE id = ?", (trace_id,))
        if not rows:
            raise InputError(f"no trace {trace_id} in {self.path}")
        return Trace.from_dict(json.loads(rows[0]["trace_json"]))

    def ping_samples(
        self, target: str | None = None, since: float | None = None
    ) -> list[dict[str, Any]]:
        """One record per ping probe: run_id, target, address, started_at, method, seq, rtt_ms."""
        where, params = self._filter("r.started_at", target, since, ("r.target", "r.address"))
        return self.records(
            "SELECT s.run_id, r.target, r.address, r.started_at, r.method, s.seq, s.rtt_ms"
            f" FROM ping_samples s JOIN probe_runs r ON r.id = s.run_id{where}"
            " ORDER BY r.started_at, s.run_id, s.seq",
            params,
        )

    def tcp_attempts(
        self, target: str | None = None, since: float | None = None
    ) -> list[dict[str, Any]]:
        where, params = self._filter("r.started_at", target, since, ("r.target", "r.address"))
        return self.records(
            "SELECT a.run_id, r.target, r.address, r.started_at, a.port, a.seq, a.method,"
            f" a.status, a.rtt_ms FROM tcp_attempts a JOIN probe_runs r ON r.id = a.run_id{where}"
            " ORDER BY r.started_at, a.run_id, a.port, a.seq",
            params,
        )

    def probe_summaries(
        self, target: str | None = None, since: float | None = None
    ) -> list[dict[str, Any]]:
        """One record per probe run with its headline figures (no JSON)."""
        where, params = self._filter("started_at", target, since, ("target", "address"))
        return self.records(
            "SELECT id AS run_id, target, address, started_at, method, sent, received, loss,"
            f" rtt_p50_ms, verdict, interrupted FROM probe_runs{where} ORDER BY started_at, id",
            params,
        )

    def hops(self, target: str | None = None, since: float | None = None) -> list[dict[str, Any]]:
        """One record per hop per trace (probe traces and standalone ones), geo columns too."""
        where, params = self._filter("t.started_at", target, since, ("t.target", "t.address"))
        return self.records(
            "SELECT h.trace_id, t.run_id, t.target, t.address AS target_address, t.started_at,"
            " t.protocol, t.reached, h.ttl, h.address, h.name, h.sent, h.received, h.loss,"
            " h.rtt_min_ms, h.rtt_p50_ms, h.rtt_max_ms, h.jitter_ms, h.country, h.city, h.asn,"
            f" h.org, h.lat, h.lon FROM hops h JOIN traces t ON t.id = h.trace_id{where}"
            " ORDER BY t.started_at, h.trace_id, h.ttl",
            params,
        )

    def plans(self, target: str | None = None, since: float | None = None) -> list[dict[str, Any]]:
        """One record per ranked chain (rank 0 is the direct path)."""
        where, params = self._filter("created_at", target, since, ("target",))
        return self.records(
            f"SELECT * FROM plans{where} ORDER BY created_at, plan_id, rank", params
        )

    def decisions(self, since: float | None = None) -> list[dict[str, Any]]:
        """Relay decisions with their predicted/observed metrics decoded."""
        where, params = self._filter("at", None, since, ())
        rows = self.records(f"SELECT * FROM relay_decisions{where} ORDER BY at, id", params)
        for r in rows:
            for key in ("predicted", "observed"):
                raw = r.pop(f"{key}_json")
                r[key] = None if raw is None else json.loads(raw)
        return rows


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "Run", "Store", "default_path", "parse_since"]
