"""Durable state: sites, meetings, who may join, and the meeting event log.

SQLite because the SFU is one process on one machine at the hub and the data is small
(164 sites, a handful of meetings a day); a file the operator can back up with `cp` beats
running a database server. WAL lets `hoinghi token` read the database while the server is
writing to it, and a busy timeout covers the rare write/write overlap between the two.

The connection is used from the server's single asyncio thread. Every method is one or a
few indexed statements, so calling it inline from a coroutine blocks the loop for well
under a millisecond — cheaper than hopping to a thread pool.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1

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
        self._conn.close()

    def __enter__(self) -> Storage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ meetings

    def get_meeting(self, meeting_id: str) -> Meeting | None:
        row = self._conn.execute("SELECT * FROM meetings WHERE id = ?", (meeting_id,)).fetchone()
        return _meeting(row) if row else None

    def create_meeting(self, meeting_id: str, title: str) -> Meeting:
        """Raises ValueError if the id is taken: silently reusing a meeting would merge logs."""
        if not meeting_id:
            raise ValueError("meeting id must not be empty")
        try:
            self._conn.execute(
                "INSERT INTO meetings (id, title, created_at) VALUES (?, ?, ?)",
                (meeting_id, title, time.time()),
            )
        except sqlite3.IntegrityError:
            raise ValueError(f"meeting {meeting_id!r} already exists") from None
        meeting = self.get_meeting(meeting_id)
        assert meeting is not None
        return meeting

    def list_meetings(self) -> list[Meeting]:
        rows = self._conn.execute("SELECT * FROM meetings ORDER BY created_at, id").fetchall()
        return [_meeting(r) for r in rows]

    def set_meeting_status(self, meeting_id: str, status: str) -> None:
        if status not in MEETING_STATUSES:
            raise ValueError(f"status must be one of {', '.join(MEETING_STATUSES)}, got {status!r}")
        cur = self._conn.execute("UPDATE meetings SET status = ? WHERE id = ?", (status, meeting_id))
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

    # ------------------------------------------------------------------ demo

    def ensure_demo(self) -> Meeting:
        """Create the demo meeting and sample sites unless they exist.

        Insert-or-ignore rather than upsert: an operator who renamed the hub must not see
        the name reset on every start.
        """
        with self._tx() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO meetings (id, title, created_at) VALUES (?, ?, ?)",
                (DEMO_MEETING_ID, DEMO_MEETING_TITLE, time.time()),
            )
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
    )


def _site(row: sqlite3.Row) -> Site:
    return Site(id=row["id"], name=row["name"], level=row["level"], parent_id=row["parent_id"])


def _event(row: sqlite3.Row) -> Event:
    return Event(
        id=int(row["id"]), meeting_id=row["meeting_id"], ts=float(row["ts"]), kind=row["kind"],
        site_id=row["site_id"], data=None if row["data"] is None else json.loads(row["data"]),
    )
