"""The head-end's LoPA state in SQLite (stdlib ``sqlite3``).

Default path ``$METERCTL_HEADEND_DB``, else ``$XDG_STATE_HOME/meterctl/headend.db`` (default
``~/.local/state/meterctl/headend.db``); ``--db`` picks another. Tables:

- ``meters``: id, last port, X25519 public key (as read by S1/S2);
- ``groups`` (gid, n, m, lambda, state ``setup``/``ready``) and ``members`` (the public key
  each member was given, and how far its set-up went: ``new``, ``begun``, ``keys``,
  ``committed``, ``failed``);
- ``runs``, ``rounds`` (interval t, state ``collecting`` -> ``recovering`` -> ``done`` or
  ``failed``, the missing set S, aggregate, error), ``ciphertexts``, ``answers`` (recovery),
  ``lab`` (lab truth: plaintexts read through the REPL, never over the WAN);
- ``ops`` and ``commands``: bytes on the wire and round-trip times of every S1-S4 command.

Every step is its own transaction (WAL, ``synchronous=FULL``): killing the head-end loses
nothing that was committed, and the next run resumes from it. The set S of a robust round is
committed before the first RECOVER is sent, so a resumed round asks with the same S: the
head-end never retries a recovery with a different set. Thread-safe (one lock around the one
connection); several processes may share the file (SQLite's own locking).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meters (
    meter_id INTEGER PRIMARY KEY, port TEXT NOT NULL DEFAULT '', pk BLOB,
    pk_created INTEGER, keygen_us INTEGER, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS groups (
    gid BLOB PRIMARY KEY, n INTEGER NOT NULL, m INTEGER NOT NULL, lam REAL NOT NULL,
    state TEXT NOT NULL, created REAL NOT NULL, ready REAL);
CREATE TABLE IF NOT EXISTS members (
    gid BLOB NOT NULL, meter_id INTEGER NOT NULL, pos INTEGER NOT NULL, pk BLOB NOT NULL,
    state TEXT NOT NULL, chunks INTEGER NOT NULL DEFAULT 0, c3_us INTEGER,
    persisted INTEGER, error TEXT, PRIMARY KEY (gid, meter_id));
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY AUTOINCREMENT, gid BLOB NOT NULL, rounds INTEGER NOT NULL,
    state TEXT NOT NULL, started REAL NOT NULL, ended REAL);
CREATE TABLE IF NOT EXISTS rounds (
    gid BLOB NOT NULL, t INTEGER NOT NULL, run_id INTEGER NOT NULL, length INTEGER NOT NULL,
    state TEXT NOT NULL, missing TEXT, why TEXT, aggregate INTEGER, error TEXT,
    expected INTEGER, started REAL NOT NULL, ended REAL, PRIMARY KEY (gid, t));
CREATE TABLE IF NOT EXISTS ciphertexts (
    gid BLOB NOT NULL, t INTEGER NOT NULL, meter_id INTEGER NOT NULL, c INTEGER NOT NULL,
    PRIMARY KEY (gid, t, meter_id));
CREATE TABLE IF NOT EXISTS answers (
    gid BLOB NOT NULL, t INTEGER NOT NULL, meter_id INTEGER NOT NULL, r INTEGER NOT NULL,
    PRIMARY KEY (gid, t, meter_id));
CREATE TABLE IF NOT EXISTS lab (
    gid BLOB NOT NULL, t INTEGER NOT NULL, meter_id INTEGER NOT NULL, x INTEGER NOT NULL,
    PRIMARY KEY (gid, t, meter_id));
CREATE TABLE IF NOT EXISTS ops (
    op_id INTEGER PRIMARY KEY AUTOINCREMENT, test TEXT NOT NULL, name TEXT NOT NULL,
    gid BLOB, meters INTEGER NOT NULL, started REAL NOT NULL, wall_s REAL NOT NULL,
    summary TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS commands (
    op_id INTEGER NOT NULL, meter_id INTEGER NOT NULL, kind TEXT NOT NULL,
    tx INTEGER NOT NULL, rx INTEGER NOT NULL, rtt_s REAL NOT NULL, meter_us INTEGER,
    ok INTEGER NOT NULL, error TEXT);
"""


class StateError(Exception):
    """The head-end database cannot be used."""


def default_path() -> Path:
    env = os.environ.get("METERCTL_HEADEND_DB")
    if env:
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "meterctl" / "headend.db"


@dataclass(frozen=True)
class MeterRow:
    meter_id: int
    port: str
    pk: bytes | None


@dataclass(frozen=True)
class GroupRow:
    gid: bytes
    n: int
    m: int
    lam: float
    state: str
    ready: float | None = None  # when its set-up was complete on every member (time.time())


@dataclass(frozen=True)
class MemberRow:
    meter_id: int
    pos: int
    pk: bytes
    state: str
    chunks: int
    c3_us: int | None
    persisted: int | None
    error: str | None


@dataclass(frozen=True)
class RunRow:
    run_id: int
    gid: bytes
    rounds: int
    state: str


@dataclass(frozen=True)
class RoundRow:
    gid: bytes
    t: int
    run_id: int
    length: int
    state: str
    missing: list[int] | None  # the committed S (robust groups), None before it is fixed
    why: dict[int, str]
    aggregate: int | None
    error: str | None
    expected: int | None


class State:
    def __init__(self, path: Path | str | None = None) -> None:
        p = path if path is not None else default_path()
        self.path = str(p) if str(p) == ":memory:" else str(Path(p).expanduser())
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False,
                                       isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            with self._tx() as db:
                for stmt in _SCHEMA.split(";"):
                    if stmt.strip():
                        db.execute(stmt)
                row = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
                if row is None:
                    db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
                elif int(row[0]) != SCHEMA_VERSION:
                    raise StateError(f"{self.path}: head-end database schema {row[0]}, this "
                                     f"meterctl knows {SCHEMA_VERSION}")
        except sqlite3.Error as e:
            raise StateError(f"{self.path}: cannot use the head-end database ({e})") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> State:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One committed transaction (or nothing, on an exception)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _q(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return list(self._db.execute(sql, args).fetchall())

    # -- meters ------------------------------------------------------------------------
    def put_meter(self, meter_id: int, port: str, pk: bytes | None = None,
                  created: bool | None = None, keygen_us: int | None = None) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO meters (meter_id, port, updated) VALUES (?, ?, ?) "
                       "ON CONFLICT (meter_id) DO UPDATE SET port=excluded.port, "
                       "updated=excluded.updated", (meter_id, port, time.time()))
            if pk is not None:
                db.execute("UPDATE meters SET pk=? WHERE meter_id=?", (pk, meter_id))
            if created is not None:
                db.execute("UPDATE meters SET pk_created=?, keygen_us=? WHERE meter_id=?",
                           (int(created), keygen_us, meter_id))

    def meter(self, meter_id: int) -> MeterRow | None:
        rows = self._q("SELECT meter_id, port, pk FROM meters WHERE meter_id=?", (meter_id,))
        return MeterRow(rows[0][0], rows[0][1], rows[0][2]) if rows else None

    def meters(self) -> list[MeterRow]:
        return [MeterRow(r[0], r[1], r[2])
                for r in self._q("SELECT meter_id, port, pk FROM meters ORDER BY meter_id")]

    # -- groups ------------------------------------------------------------------------
    def group(self, gid: bytes) -> GroupRow | None:
        rows = self._q("SELECT gid, n, m, lam, state, ready FROM groups WHERE gid=?", (gid,))
        return GroupRow(*rows[0]) if rows else None

    def groups(self) -> list[GroupRow]:
        return [GroupRow(*r) for r in self._q("SELECT gid, n, m, lam, state, ready FROM groups "
                                              "ORDER BY created")]

    def members(self, gid: bytes) -> list[MemberRow]:
        return [MemberRow(*r) for r in self._q(
            "SELECT meter_id, pos, pk, state, chunks, c3_us, persisted, error FROM members "
            "WHERE gid=? ORDER BY pos", (gid,))]

    def begin_group(self, gid: bytes, m: int, lam: float,
                    members: list[tuple[int, bytes]]) -> None:
        """A new set-up of ``gid`` (replacing any earlier one), every member ``new``."""
        with self._tx() as db:
            db.execute("DELETE FROM members WHERE gid=?", (gid,))
            db.execute("INSERT OR REPLACE INTO groups (gid, n, m, lam, state, created) "
                       "VALUES (?, ?, ?, ?, 'setup', ?)",
                       (gid, len(members), m, lam, time.time()))
            db.executemany("INSERT INTO members (gid, meter_id, pos, pk, state) "
                           "VALUES (?, ?, ?, ?, 'new')",
                           [(gid, mid, k, pk) for k, (mid, pk) in enumerate(members)])

    def member_progress(self, gid: bytes, meter_id: int, state: str, chunks: int | None = None,
                        c3_us: int | None = None, persisted: int | None = None,
                        error: str | None = None) -> None:
        with self._tx() as db:
            db.execute("UPDATE members SET state=?, chunks=COALESCE(?, chunks), "
                       "c3_us=COALESCE(?, c3_us), persisted=COALESCE(?, persisted), error=? "
                       "WHERE gid=? AND meter_id=?",
                       (state, chunks, c3_us, persisted, error, gid, meter_id))

    def set_group_state(self, gid: bytes, state: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE groups SET state=?, ready=? WHERE gid=?",
                       (state, time.time() if state == "ready" else None, gid))

    # -- runs and rounds -----------------------------------------------------------------
    def open_run(self, gid: bytes, rounds: int) -> tuple[RunRow, bool]:
        """The group's unfinished run (now aiming at ``rounds``), or a new one; and whether
        it was resumed."""
        with self._tx() as db:
            row = db.execute("SELECT run_id FROM runs WHERE gid=? AND state='running' "
                             "ORDER BY run_id DESC LIMIT 1", (gid,)).fetchone()
            if row:
                db.execute("UPDATE runs SET rounds=? WHERE run_id=?", (rounds, row[0]))
                return RunRow(int(row[0]), gid, rounds, "running"), True
            cur = db.execute("INSERT INTO runs (gid, rounds, state, started) "
                             "VALUES (?, ?, 'running', ?)", (gid, rounds, time.time()))
            return RunRow(int(cur.lastrowid or 0), gid, rounds, "running"), False

    def finish_run(self, run_id: int) -> None:
        with self._tx() as db:
            db.execute("UPDATE runs SET state='done', ended=? WHERE run_id=?",
                       (time.time(), run_id))

    def _round(self, r: tuple[Any, ...]) -> RoundRow:
        return RoundRow(gid=r[0], t=r[1], run_id=r[2], length=r[3], state=r[4],
                        missing=None if r[5] is None else [int(i) for i in json.loads(r[5])],
                        why={int(k): v for k, v in json.loads(r[6] or "{}").items()},
                        aggregate=r[7], error=r[8], expected=r[9])

    _ROUND_COLS = "gid, t, run_id, length, state, missing, why, aggregate, error, expected"

    def round(self, gid: bytes, t: int) -> RoundRow | None:
        rows = self._q(f"SELECT {self._ROUND_COLS} FROM rounds WHERE gid=? AND t=?", (gid, t))
        return self._round(rows[0]) if rows else None

    def rounds_of_run(self, run_id: int) -> list[RoundRow]:
        return [self._round(r) for r in self._q(
            f"SELECT {self._ROUND_COLS} FROM rounds WHERE run_id=? ORDER BY t", (run_id,))]

    def rounds(self, gid: bytes) -> list[RoundRow]:
        return [self._round(r) for r in self._q(
            f"SELECT {self._ROUND_COLS} FROM rounds WHERE gid=? ORDER BY t", (gid,))]

    def start_round(self, gid: bytes, t: int, run_id: int, length: int) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO rounds (gid, t, run_id, length, state, started) "
                       "VALUES (?, ?, ?, ?, 'collecting', ?)",
                       (gid, t, run_id, length, time.time()))

    def put_ciphertext(self, gid: bytes, t: int, meter_id: int, c: int) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO ciphertexts VALUES (?, ?, ?, ?)",
                       (gid, t, meter_id, c))

    def ciphertexts(self, gid: bytes, t: int) -> dict[int, int]:
        return {int(i): int(c) for i, c in self._q(
            "SELECT meter_id, c FROM ciphertexts WHERE gid=? AND t=?", (gid, t))}

    def fix_missing(self, gid: bytes, t: int, missing: list[int], why: dict[int, str]) -> None:
        """Commit the set S of a robust round (before any RECOVER goes out). Once only."""
        with self._tx() as db:
            row = db.execute("SELECT missing FROM rounds WHERE gid=? AND t=?", (gid, t)).fetchone()
            if row is None or row[0] is not None:
                raise StateError(f"round {t}: the missing set is already fixed")
            db.execute("UPDATE rounds SET state='recovering', missing=?, why=? "
                       "WHERE gid=? AND t=?",
                       (json.dumps(sorted(missing)), json.dumps({str(k): v for k, v in
                                                                 why.items()}), gid, t))

    def put_answer(self, gid: bytes, t: int, meter_id: int, r: int) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?)", (gid, t, meter_id, r))

    def answers(self, gid: bytes, t: int) -> dict[int, int]:
        return {int(i): int(r) for i, r in self._q(
            "SELECT meter_id, r FROM answers WHERE gid=? AND t=?", (gid, t))}

    def finish_round(self, gid: bytes, t: int, ok: bool, aggregate: int | None,
                     error: str | None, missing: list[int], why: dict[int, str]) -> None:
        with self._tx() as db:
            db.execute("UPDATE rounds SET state=?, aggregate=?, error=?, "
                       "missing=COALESCE(missing, ?), why=?, ended=? WHERE gid=? AND t=?",
                       ("done" if ok else "failed", aggregate, error,
                        json.dumps(sorted(missing)),
                        json.dumps({str(k): v for k, v in why.items()}), time.time(), gid, t))

    def put_lab(self, gid: bytes, t: int, values: dict[int, int], expected: int | None) -> None:
        with self._tx() as db:
            db.executemany("INSERT OR REPLACE INTO lab VALUES (?, ?, ?, ?)",
                           [(gid, t, i, x) for i, x in values.items()])
            db.execute("UPDATE rounds SET expected=? WHERE gid=? AND t=?", (expected, gid, t))

    def lab(self, gid: bytes, t: int) -> dict[int, int]:
        return {int(i): int(x) for i, x in self._q(
            "SELECT meter_id, x FROM lab WHERE gid=? AND t=?", (gid, t))}

    # -- figures ---------------------------------------------------------------------------
    def save_op(self, test: str, name: str, gid: bytes | None, meters: int, started: float,
                wall_s: float, summary: dict[str, Any],
                commands: list[tuple[int, str, int, int, float, int | None, bool, str | None]]
                ) -> int:
        with self._tx() as db:
            cur = db.execute("INSERT INTO ops (test, name, gid, meters, started, wall_s, summary) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (test, name, gid, meters, started, wall_s, json.dumps(summary)))
            op_id = int(cur.lastrowid or 0)
            db.executemany("INSERT INTO commands VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           [(op_id, *c) for c in commands])
            return op_id

    def ops(self, test: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT op_id, test, name, meters, started, wall_s, summary FROM ops"
        rows = self._q(sql + " WHERE test=? ORDER BY op_id" if test else sql + " ORDER BY op_id",
                       (test,) if test else ())
        return [{"op_id": r[0], "test": r[1], "name": r[2], "meters": r[3], "started": r[4],
                 "wall_s": r[5], **json.loads(r[6])} for r in rows]
