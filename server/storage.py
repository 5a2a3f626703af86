"""Durable state: sites, meetings, who may join, the meeting event log and roll calls.

SQLite because the SFU is one process on one machine at the hub and the data is small
(164 sites, a handful of meetings a day); a file the operator can back up with `cp` beats
running a database server. WAL lets `hoinghi token` read the database while the server is
writing to it, and a busy timeout covers the rare write/write overlap between the two.

The connection is used from the server's single asyncio thread. Every method is one or a
few indexed statements, so calling it inline from a coroutine blocks the loop for well
under a millisecond — cheaper than hopping to a thread pool.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 3

LEVELS = ("province", "district", "commune")
MEETING_STATUSES = ("scheduled", "live", "ended")

DEMO_MEETING_ID = "demo"
DEMO_MEETING_TITLE = "Hội nghị thử (demo)"

# Index i holds the statements that take user_version from i to i + 1. Never edit a
# shipped entry: databases in the field are already past it. Append a new one instead.
_MIGRATIONS: list[str] = [
    """
    CREATE TABLE sites (
        id        TEXT PRIMARY KEY,
        name      TEXT NOT NULL,
        level     TEXT NOT NULL CHECK (level IN ('province', 'district', 'commune')),
        parent_id TEXT NULL REFERENCES sites(id) ON DELETE SET NULL
    );
    CREATE TABLE meetings (
        id         TEXT PRIMARY KEY,
        title      TEXT NOT NULL,
        status     TEXT NOT NULL DEFAULT 'scheduled'
                   CHECK (status IN ('scheduled', 'live', 'ended')),
        created_at REAL NOT NULL,
        locked     INTEGER NOT NULL DEFAULT 0 CHECK (locked IN (0, 1))
    );
    CREATE TABLE meeting_sites (
        meeting_id TEXT NOT NULL REFERENCES meetings(id) ON DELETE CASCADE,
        site_id    TEXT NOT NULL REFERENCES sites(id) ON DELETE CASCADE,
        PRIMARY KEY (meeting_id, site_id)
    );
    -- site_id is deliberately not a foreign key: the log must survive a site being
    -- renamed or removed, and must record attempts by sites that are not registered.
    CREATE TABLE events (
        id         INTEGER PRIMARY KEY,
        meeting_id TEXT NOT NULL REFERENCES meetings(id) ON DELETE CASCADE,
        ts         REAL NOT NULL,
        kind       TEXT NOT NULL,
        site_id    TEXT NULL,
        data       TEXT NULL
    );
    CREATE INDEX events_by_meeting ON events (meeting_id, id);
    """,
    # 1 -> 2: meeting schedule, and roll calls with one attendance row per expected site.
    """
    ALTER TABLE meetings ADD COLUMN scheduled_at REAL NULL;
    ALTER TABLE meetings ADD COLUMN duration_min INTEGER NULL;
    ALTER TABLE meetings ADD COLUMN started_at REAL NULL;
    ALTER TABLE meetings ADD COLUMN ended_at REAL NULL;
    CREATE TABLE roll_calls (
        id         INTEGER PRIMARY KEY,
        meeting_id TEXT NOT NULL REFERENCES meetings(id) ON DELETE CASCADE,
        started_at REAL NOT NULL,
        ended_at   REAL NULL,
        started_by TEXT NULL
    );
    CREATE INDEX roll_calls_by_meeting ON roll_calls (meeting_id, id);
    -- site_name is copied at roll-call time, like events: the record must not change
    -- when the registry does.
    CREATE TABLE attendance (
        roll_call_id INTEGER NOT NULL REFERENCES roll_calls(id) ON DELETE CASCADE,
        site_id      TEXT NOT NULL,
        site_name    TEXT NOT NULL,
        connected    INTEGER NOT NULL DEFAULT 0 CHECK (connected IN (0, 1)),
        answered_at  REAL NULL,
        PRIMARY KEY (roll_call_id, site_id)
    );
    """,
    # 2 -> 3: who the chair removed from a meeting and who has been in it (may rejoin when
    # it is locked). In memory before, so a restart readmitted removed sites.
    """
    CREATE TABLE meeting_admissions (
        meeting_id TEXT NOT NULL REFERENCES meetings(id) ON DELETE CASCADE,
        site_id    TEXT NOT NULL,
        admitted   INTEGER NOT NULL DEFAULT 0 CHECK (admitted IN (0, 1)),
        removed    INTEGER NOT NULL DEFAULT 0 CHECK (removed IN (0, 1)),
        PRIMARY KEY (meeting_id, site_id)
    );
    """,
]
assert len(_MIGRATIONS) == SCHEMA_VERSION


class StorageError(Exception):
    """The database file cannot be used (wrong version, corrupt, unwritable)."""


@dataclass(frozen=True)
class Site:
    id: str
    name: str
    level: str
    parent_id: str | None = None


@dataclass(frozen=True)
class Meeting:
    id: str
    title: str
    status: str
    created_at: float
    locked: bool
    scheduled_at: float | None = None  # Unix seconds; None = not scheduled (ad hoc)
    duration_min: int | None = None
    started_at: float | None = None
    ended_at: float | None = None


@dataclass(frozen=True)
class RollCall:
    id: int
    meeting_id: str
    started_at: float
    ended_at: float | None
    started_by: str | None

    @property
    def active(self) -> bool:
        return self.ended_at is None


@dataclass(frozen=True)
class Attendance:
    """One site's answer to one roll call. `status`: present (answered), no_answer
    (connected but did not answer before the roll call ended, or has not answered yet),
    absent (not connected)."""

    roll_call_id: int
    site_id: str
    site_name: str
    connected: bool
    answered_at: float | None

    @property
    def status(self) -> str:
        if self.answered_at is not None:
            return "present"
        return "no_answer" if self.connected else "absent"


class SiteImportError(ValueError):
    """A sites CSV was refused; `errors` lists every problem as "line N: what is wrong"."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors[:5]) + (f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""))
        self.errors = errors


SITE_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
#: Level names accepted in a CSV, besides the canonical ones (what people type in Excel).
_LEVEL_ALIASES = {
    "province": "province", "tinh": "province", "tỉnh": "province", "hub": "province",
    "district": "district", "huyen": "district", "huyện": "district",
    "commune": "commune", "xa": "commune", "xã": "commune", "phuong": "commune", "phường": "commune",
    "thi tran": "commune", "thị trấn": "commune",
}
_LEVEL_RANK = {"province": 0, "district": 1, "commune": 2}
SAMPLE_SITES_CSV = Path(__file__).resolve().parent / "data" / "sites-sample.csv"


@dataclass(frozen=True)
class Event:
    id: int
    meeting_id: str
    ts: float
    kind: str
    site_id: str | None
    data: Any


class Storage:
    """One SQLite database file; opening it creates or migrates the schema."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we issue BEGIN ourselves, so a single-statement write
            # commits at once and never leaves a transaction open across an await.
            self._conn = sqlite3.connect(self.path, isolation_level=None, timeout=5.0)
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"cannot open database {self.path}: {exc}") from None
        self._conn.row_factory = sqlite3.Row
        try:
            self._conn.execute("PRAGMA foreign_keys = ON")
            mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StorageError(f"database {self.path} cannot use WAL journal (got {mode})")
            # NORMAL is durable in WAL mode except for the last transactions on power loss;
            # losing a few log events then is acceptable, fsync on every event is not.
            self._conn.execute("PRAGMA synchronous = NORMAL")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise StorageError(f"database {self.path} is not usable: {exc}") from None
        except StorageError:
            self._conn.close()
            raise

    # ------------------------------------------------------------------ plumbing

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock up front so two writers wait (busy timeout)
        # instead of one failing half-way with SQLITE_BUSY on lock upgrade.
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        else:
            self._conn.execute("COMMIT")

    def _migrate(self) -> None:
        with self._tx() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StorageError(
                    f"database {self.path} has schema version {version}, newer than this "
                    f"hoinghi ({SCHEMA_VERSION}); upgrade hoinghi or use another --data-dir"
                )
            for step in range(version, SCHEMA_VERSION):
                for statement in _split_sql(_MIGRATIONS[step]):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {step + 1}")

    def schema_version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    def journal_mode(self) -> str:
        return str(self._conn.execute("PRAGMA journal_mode").fetchone()[0])

    def close(self) -> None:
        """Checkpoint the WAL into the main file, then close: a clean shutdown leaves one file."""
        try:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass  # another process holds a read lock: the WAL stays, SQLite replays it on open
        self._conn.close()

    def __enter__(self) -> Storage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ meetings

    def get_meeting(self, meeting_id: str) -> Meeting | None:
        row = self._conn.execute("SELECT * FROM meetings WHERE id = ?", (meeting_id,)).fetchone()
        return _meeting(row) if row else None

    def create_meeting(
        self, meeting_id: str, title: str, scheduled_at: float | None = None, duration_min: int | None = None
    ) -> Meeting:
        """Raises ValueError if the id is taken: silently reusing a meeting would merge logs."""
        if not meeting_id:
            raise ValueError("meeting id must not be empty")
        try:
            self._conn.execute(
                "INSERT INTO meetings (id, title, created_at, scheduled_at, duration_min) VALUES (?, ?, ?, ?, ?)",
                (meeting_id, title, time.time(), scheduled_at, duration_min),
            )
        except sqlite3.IntegrityError:
            raise ValueError(f"meeting {meeting_id!r} already exists") from None
        meeting = self.get_meeting(meeting_id)
        assert meeting is not None
        return meeting

    def list_meetings(self) -> list[Meeting]:
        rows = self._conn.execute("SELECT * FROM meetings ORDER BY created_at, id").fetchall()
        return [_meeting(r) for r in rows]

    _UNSET: Any = object()

    def update_meeting(
        self, meeting_id: str, title: Any = _UNSET, scheduled_at: Any = _UNSET, duration_min: Any = _UNSET
    ) -> Meeting:
        """Change title and/or schedule; arguments left out keep their value (None clears)."""
        sets, args = [], []
        for column, value in (("title", title), ("scheduled_at", scheduled_at), ("duration_min", duration_min)):
            if value is not self._UNSET:
                sets.append(f"{column} = ?")
                args.append(value)
        if sets:
            cur = self._conn.execute(f"UPDATE meetings SET {', '.join(sets)} WHERE id = ?", (*args, meeting_id))
            if cur.rowcount == 0:
                raise KeyError(meeting_id)
        meeting = self.get_meeting(meeting_id)
        if meeting is None:
            raise KeyError(meeting_id)
        return meeting

    def delete_meeting(self, meeting_id: str) -> None:
        """Remove a meeting with its invitation list, log and roll calls."""
        cur = self._conn.execute("DELETE FROM meetings WHERE id = ?", (meeting_id,))
        if cur.rowcount == 0:
            raise KeyError(meeting_id)

    def set_meeting_status(self, meeting_id: str, status: str) -> None:
        """Also stamps started_at (first time live) and ended_at (when ended)."""
        if status not in MEETING_STATUSES:
            raise ValueError(f"status must be one of {', '.join(MEETING_STATUSES)}, got {status!r}")
        now = time.time()
        cur = self._conn.execute(
            """
            UPDATE meetings SET status = :s,
              started_at = CASE WHEN :s = 'live' AND started_at IS NULL THEN :now ELSE started_at END,
              ended_at = CASE WHEN :s = 'ended' THEN :now WHEN :s = 'live' THEN NULL ELSE ended_at END
            WHERE id = :id
            """,
            {"s": status, "now": now, "id": meeting_id},
        )
        if cur.rowcount == 0:
            raise KeyError(meeting_id)

    def set_meeting_locked(self, meeting_id: str, locked: bool) -> None:
        cur = self._conn.execute("UPDATE meetings SET locked = ? WHERE id = ?", (int(locked), meeting_id))
        if cur.rowcount == 0:
            raise KeyError(meeting_id)

    def set_meeting_sites(self, meeting_id: str, site_ids: Iterable[str]) -> None:
        """Replace the invitation list; an empty list opens the meeting to every site."""
        ids = list(dict.fromkeys(site_ids))
        with self._tx() as conn:
            if conn.execute("SELECT 1 FROM meetings WHERE id = ?", (meeting_id,)).fetchone() is None:
                raise KeyError(meeting_id)
            conn.execute("DELETE FROM meeting_sites WHERE meeting_id = ?", (meeting_id,))
            try:
                conn.executemany(
                    "INSERT INTO meeting_sites (meeting_id, site_id) VALUES (?, ?)",
                    [(meeting_id, s) for s in ids],
                )
            except sqlite3.IntegrityError:
                missing = [s for s in ids if self.get_site(s) is None]
                raise ValueError(f"unknown site(s): {', '.join(missing)}") from None

    def meeting_site_ids(self, meeting_id: str) -> list[str]:
        rows = self._conn.execute(
            "SELECT site_id FROM meeting_sites WHERE meeting_id = ? ORDER BY site_id", (meeting_id,)
        ).fetchall()
        return [r[0] for r in rows]

    def site_may_join(self, meeting_id: str, site_id: str) -> bool:
        """False for an unknown meeting. With no invitation list any site id may join —
        including ones not registered in `sites`, so ad-hoc demo tokens work."""
        row = self._conn.execute(
            """
            SELECT
              (SELECT COUNT(*) FROM meetings WHERE id = :m),
              (SELECT COUNT(*) FROM meeting_sites WHERE meeting_id = :m),
              (SELECT COUNT(*) FROM meeting_sites WHERE meeting_id = :m AND site_id = :s)
            """,
            {"m": meeting_id, "s": site_id},
        ).fetchone()
        exists, invited_total, invited_this = row
        if not exists:
            return False
        return invited_total == 0 or invited_this > 0

    # ------------------------------------------------------------------ sites

    def upsert_site(self, site: Site) -> None:
        if site.level not in LEVELS:
            raise ValueError(f"site level must be one of {', '.join(LEVELS)}, got {site.level!r}")
        try:
            self._conn.execute(
                """
                INSERT INTO sites (id, name, level, parent_id) VALUES (?, ?, ?, ?)
                ON CONFLICT (id) DO UPDATE SET
                  name = excluded.name, level = excluded.level, parent_id = excluded.parent_id
                """,
                (site.id, site.name, site.level, site.parent_id),
            )
        except sqlite3.IntegrityError:
            raise ValueError(f"parent site {site.parent_id!r} of {site.id!r} does not exist") from None

    def get_site(self, site_id: str) -> Site | None:
        row = self._conn.execute("SELECT * FROM sites WHERE id = ?", (site_id,)).fetchone()
        return _site(row) if row else None

    def list_sites(self) -> list[Site]:
        order = "CASE level WHEN 'province' THEN 0 WHEN 'district' THEN 1 ELSE 2 END"
        rows = self._conn.execute(f"SELECT * FROM sites ORDER BY {order}, id").fetchall()
        return [_site(r) for r in rows]

    def import_sites_csv(self, text: str, replace: bool = False) -> dict[str, int]:
        """Load the site registry from CSV text: header `id,name,level,parent_id`.

        All or nothing: any bad row refuses the whole file with SiteImportError listing
        every problem by line. Rows may come in any order (a commune before its district).
        `replace=True` also deletes registered sites missing from the file (their
        invitations go with them). Returns counts: added, updated, removed, total.
        """
        numbered, errors = parse_sites_csv(text)
        rows = [site for _, site in numbered]
        existing = {s.id: s for s in self.list_sites()}
        in_file = {site.id: site for site in rows}
        known_levels = {sid: s.level for sid, s in existing.items() if not replace or sid in in_file}
        known_levels.update({sid: s.level for sid, s in in_file.items()})
        for line, site in numbered:
            if site.parent_id is None:
                continue
            parent_level = known_levels.get(site.parent_id)
            if parent_level is None:
                errors.append(f"line {line}: parent_id {site.parent_id!r} of {site.id!r} is neither in the file nor registered")
            elif _LEVEL_RANK[parent_level] >= _LEVEL_RANK[site.level]:
                errors.append(f"line {line}: {site.id!r} ({site.level}) cannot belong to {site.parent_id!r} ({parent_level})")
        # (a parent is always a higher level, so the hierarchy cannot loop)
        if errors:
            raise SiteImportError(errors)
        added = sum(1 for sid in in_file if sid not in existing)
        updated = sum(1 for sid, site in in_file.items() if sid in existing and existing[sid] != site)
        removed = [sid for sid in existing if sid not in in_file] if replace else []
        with self._tx() as conn:
            # Parents first: insert everything without parents, then link them up.
            conn.executemany(
                """
                INSERT INTO sites (id, name, level, parent_id) VALUES (?, ?, ?, NULL)
                ON CONFLICT (id) DO UPDATE SET name = excluded.name, level = excluded.level
                """,
                [(s.id, s.name, s.level) for s in rows],
            )
            conn.executemany("UPDATE sites SET parent_id = ? WHERE id = ?", [(s.parent_id, s.id) for s in rows])
            if removed:
                conn.executemany("DELETE FROM sites WHERE id = ?", [(sid,) for sid in removed])
        return {"added": added, "updated": updated, "removed": len(removed), "total": len(self.list_sites())}

    def sites_csv(self) -> str:
        """The registry in the format import_sites_csv reads."""
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        w.writerow(["id", "name", "level", "parent_id"])
        for s in self.list_sites():
            w.writerow([s.id, s.name, s.level, s.parent_id or ""])
        return out.getvalue()

    def load_sample_sites(self, replace: bool = False) -> dict[str, int]:
        """Import the shipped sample registry (164 sites of one province) over the current one."""
        return self.import_sites_csv(SAMPLE_SITES_CSV.read_text(encoding="utf-8"), replace=replace)

    # ------------------------------------------------------------------ events

    def add_event(
        self, meeting_id: str, kind: str, site_id: str | None = None, data: Any = None
    ) -> int:
        """Append to the meeting log; `data` must be JSON-serialisable. Returns the event id."""
        payload = None if data is None else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        cur = self._conn.execute(
            "INSERT INTO events (meeting_id, ts, kind, site_id, data) VALUES (?, ?, ?, ?, ?)",
            (meeting_id, time.time(), kind, site_id, payload),
        )
        return int(cur.lastrowid or 0)

    def list_events(self, meeting_id: str, limit: int = 200) -> list[Event]:
        """The most recent `limit` events, oldest first (the order a log is read in)."""
        rows = self._conn.execute(
            "SELECT * FROM (SELECT * FROM events WHERE meeting_id = ? ORDER BY id DESC LIMIT ?) ORDER BY id",
            (meeting_id, max(0, int(limit))),
        ).fetchall()
        return [_event(r) for r in rows]

    def list_events_after(self, meeting_id: str, after_id: int = 0, limit: int = 500) -> list[Event]:
        """Events with id > after_id, oldest first: how a console follows the log."""
        rows = self._conn.execute(
            "SELECT * FROM events WHERE meeting_id = ? AND id > ? ORDER BY id LIMIT ?",
            (meeting_id, int(after_id), max(0, int(limit))),
        ).fetchall()
        return [_event(r) for r in rows]

    # ------------------------------------------------------------------ roll calls

    def start_roll_call(
        self, meeting_id: str, expected: Iterable[tuple[str, str, bool]], started_by: str | None = None
    ) -> RollCall:
        """Open a roll call with one row per expected site: (site id, name, connected now)."""
        now = time.time()
        with self._tx() as conn:
            cur = conn.execute(
                "INSERT INTO roll_calls (meeting_id, started_at, started_by) VALUES (?, ?, ?)",
                (meeting_id, now, started_by),
            )
            rc_id = int(cur.lastrowid or 0)
            conn.executemany(
                "INSERT OR IGNORE INTO attendance (roll_call_id, site_id, site_name, connected) VALUES (?, ?, ?, ?)",
                [(rc_id, sid, name, int(bool(connected))) for sid, name, connected in expected],
            )
        return RollCall(rc_id, meeting_id, now, None, started_by)

    def answer_roll_call(self, roll_call_id: int, site_id: str, site_name: str) -> bool:
        """Mark a site present. False if the roll call is over or the site already answered."""
        with self._tx() as conn:
            row = conn.execute("SELECT ended_at FROM roll_calls WHERE id = ?", (roll_call_id,)).fetchone()
            if row is None or row[0] is not None:
                return False
            conn.execute(
                "INSERT OR IGNORE INTO attendance (roll_call_id, site_id, site_name, connected) VALUES (?, ?, ?, 1)",
                (roll_call_id, site_id, site_name),
            )
            cur = conn.execute(
                "UPDATE attendance SET answered_at = ?, connected = 1 WHERE roll_call_id = ? AND site_id = ? AND answered_at IS NULL",
                (time.time(), roll_call_id, site_id),
            )
            return cur.rowcount > 0

    def mark_roll_call_connected(self, roll_call_id: int, site_id: str, site_name: str) -> None:
        """A site joined while the roll call is open: it is expected to answer."""
        self._conn.execute(
            """
            INSERT INTO attendance (roll_call_id, site_id, site_name, connected) VALUES (?, ?, ?, 1)
            ON CONFLICT (roll_call_id, site_id) DO UPDATE SET connected = 1
            """,
            (roll_call_id, site_id, site_name),
        )

    def end_roll_call(self, roll_call_id: int) -> RollCall | None:
        self._conn.execute("UPDATE roll_calls SET ended_at = ? WHERE id = ? AND ended_at IS NULL", (time.time(), roll_call_id))
        return self.get_roll_call(roll_call_id)

    def end_open_roll_calls(self, meeting_id: str) -> None:
        self._conn.execute("UPDATE roll_calls SET ended_at = ? WHERE meeting_id = ? AND ended_at IS NULL", (time.time(), meeting_id))

    def get_roll_call(self, roll_call_id: int) -> RollCall | None:
        row = self._conn.execute("SELECT * FROM roll_calls WHERE id = ?", (roll_call_id,)).fetchone()
        return _roll_call(row) if row else None

    def list_roll_calls(self, meeting_id: str) -> list[RollCall]:
        rows = self._conn.execute("SELECT * FROM roll_calls WHERE meeting_id = ? ORDER BY id", (meeting_id,)).fetchall()
        return [_roll_call(r) for r in rows]

    def attendance(self, roll_call_id: int) -> list[Attendance]:
        rows = self._conn.execute(
            "SELECT * FROM attendance WHERE roll_call_id = ? ORDER BY site_id", (roll_call_id,)
        ).fetchall()
        return [
            Attendance(int(r["roll_call_id"]), r["site_id"], r["site_name"], bool(r["connected"]),
                       None if r["answered_at"] is None else float(r["answered_at"]))
            for r in rows
        ]

    # ------------------------------------------------------------------ demo

    # ------------------------------------------------------------------ admissions

    def site_admissions(self, meeting_id: str) -> tuple[set[str], set[str]]:
        """(sites that have been in, sites the chair removed) of a meeting."""
        rows = self._conn.execute(
            "SELECT site_id, admitted, removed FROM meeting_admissions WHERE meeting_id = ?", (meeting_id,)
        ).fetchall()
        return {r["site_id"] for r in rows if r["admitted"]}, {r["site_id"] for r in rows if r["removed"]}

    def set_site_admission(self, meeting_id: str, site_id: str, flag: str, value: bool) -> None:
        """Set `admitted` or `removed` for one site of a meeting."""
        if flag not in ("admitted", "removed"):
            raise ValueError(f"unknown admission flag {flag!r}")
        with self._tx() as conn:
            conn.execute(
                f"INSERT INTO meeting_admissions (meeting_id, site_id, {flag}) VALUES (?, ?, ?) "
                f"ON CONFLICT (meeting_id, site_id) DO UPDATE SET {flag} = excluded.{flag}",
                (meeting_id, site_id, int(value)),
            )

    def clear_site_admissions(self, meeting_id: str) -> None:
        """Forget who was removed or admitted (the meeting ended: a reopened one starts clean)."""
        with self._tx() as conn:
            conn.execute("DELETE FROM meeting_admissions WHERE meeting_id = ?", (meeting_id,))

    def ensure_demo(self) -> Meeting:
        """Create the demo meeting, and three demo sites if the registry is empty.

        Insert-or-ignore rather than upsert: an operator who renamed the hub must not see
        the name reset on every start; and an operator who imported a registry (which
        may have dropped the demo sites) must not see them come back.
        """
        with self._tx() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO meetings (id, title, created_at) VALUES (?, ?, ?)",
                (DEMO_MEETING_ID, DEMO_MEETING_TITLE, time.time()),
            )
            if conn.execute("SELECT 1 FROM sites LIMIT 1").fetchone() is None:
                conn.executemany(
                "INSERT OR IGNORE INTO sites (id, name, level, parent_id) VALUES (?, ?, ?, ?)",
                    [
                        ("hub", "Trung tâm tỉnh", "province", None),
                        ("district-demo", "Huyện mẫu", "district", "hub"),
                        ("commune-demo", "Xã mẫu", "commune", "district-demo"),
                    ],
                )
        meeting = self.get_meeting(DEMO_MEETING_ID)
        assert meeting is not None
        return meeting


def _split_sql(script: str) -> list[str]:
    # executescript() would COMMIT our open transaction; run statements one by one instead.
    parts: list[str] = []
    buf = ""
    for line in script.splitlines(keepends=True):
        if line.strip().startswith("--"):
            continue
        buf += line
        if sqlite3.complete_statement(buf):
            parts.append(buf.strip())
            buf = ""
    if buf.strip():
        raise StorageError("incomplete SQL statement in migration")
    return parts


def _meeting(row: sqlite3.Row) -> Meeting:
    return Meeting(
        id=row["id"], title=row["title"], status=row["status"],
        created_at=float(row["created_at"]), locked=bool(row["locked"]),
        scheduled_at=row["scheduled_at"], duration_min=row["duration_min"],
        started_at=row["started_at"], ended_at=row["ended_at"],
    )


def _roll_call(row: sqlite3.Row) -> RollCall:
    return RollCall(
        id=int(row["id"]), meeting_id=row["meeting_id"], started_at=float(row["started_at"]),
        ended_at=None if row["ended_at"] is None else float(row["ended_at"]), started_by=row["started_by"],
    )


def parse_sites_csv(text: str) -> tuple[list[tuple[int, Site]], list[str]]:
    """(line number, site) rows of a sites CSV and the problems found in them (line 1 = header).

    Accepts a UTF-8 BOM (Excel), `,` `;` or tab as separator, and Vietnamese level names
    (tỉnh / huyện / xã / phường / thị trấn, with or without accents).
    """
    errors: list[str] = []
    text = text.lstrip("\ufeff")
    first = text.split("\n", 1)[0]
    delimiter = max((",", ";", "\t"), key=first.count)
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        return [], ["the file is empty; the first line must be: id,name,level,parent_id"]
    need = ["id", "name", "level", "parent_id"]
    missing = [h for h in need if h not in header]
    if missing:
        return [], [f"line 1: missing column(s) {', '.join(missing)}; the first line must be: id,name,level,parent_id"]
    col = {h: header.index(h) for h in need}
    sites: list[tuple[int, Site]] = []
    seen: dict[str, int] = {}
    for row in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        cells = [row[col[h]].strip() if col[h] < len(row) else "" for h in need]
        sid, name, level, parent = cells
        bad = False
        if not SITE_ID_RE.match(sid):
            errors.append(f"line {line}: id {sid!r} must be 1-64 lowercase letters a-z, digits, '.', '_' or '-' (no accents or spaces)")
            bad = True
        elif sid in seen:
            errors.append(f"line {line}: id {sid!r} already used on line {seen[sid]}")
            bad = True
        if not name or len(name) > 120:
            errors.append(f"line {line}: name must be 1-120 characters")
            bad = True
        canonical = _LEVEL_ALIASES.get(level.lower())
        if canonical is None:
            errors.append(f"line {line}: level {level!r} must be province, district or commune (tỉnh, huyện, xã)")
            bad = True
        if parent == sid and sid:
            errors.append(f"line {line}: {sid!r} cannot be its own parent")
            bad = True
        if canonical == "province" and parent:
            errors.append(f"line {line}: a province site has no parent; leave parent_id empty")
            bad = True
        if canonical in ("district", "commune") and not parent:
            errors.append(f"line {line}: a {canonical} needs a parent_id (its {'province' if canonical == 'district' else 'district'})")
            bad = True
        if len(errors) > 200:
            errors.append("too many errors; stopped reading")
            break
        if not bad:
            seen[sid] = line
            sites.append((line, Site(sid, name, canonical, parent or None)))
    if not sites and not errors:
        errors.append("the file has a header but no sites")
    return sites, errors


def _site(row: sqlite3.Row) -> Site:
    return Site(id=row["id"], name=row["name"], level=row["level"], parent_id=row["parent_id"])


def _event(row: sqlite3.Row) -> Event:
    return Event(
        id=int(row["id"]), meeting_id=row["meeting_id"], ts=float(row["ts"]), kind=row["kind"],
        site_id=row["site_id"], data=None if row["data"] is None else json.loads(row["data"]),
    )
