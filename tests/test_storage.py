"""Storage against a real SQLite file in tmp_path."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from server.storage import (
    DEMO_MEETING_ID,
    DEMO_MEETING_TITLE,
    SCHEMA_VERSION,
    Site,
    Storage,
    StorageError,
)


@pytest.fixture
def store(tmp_path: Path):
    s = Storage(tmp_path / "data" / "hoinghi.db")
    yield s
    s.close()


def test_file_created_with_wal_and_schema(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "hoinghi.db"
    with Storage(path) as s:
        assert path.is_file()
        assert s.journal_mode() == "wal"
        assert s.schema_version() == SCHEMA_VERSION
    # Seen by an independent connection too: WAL is persistent, the version is in the file.
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"sites", "meetings", "meeting_sites", "events"} <= tables
    finally:
        raw.close()


def test_reopen_keeps_data(tmp_path: Path) -> None:
    path = tmp_path / "hoinghi.db"
    with Storage(path) as s:
        s.create_meeting("m1", "Giao ban tuần")
    with Storage(path) as s:
        m = s.get_meeting("m1")
        assert m is not None and m.title == "Giao ban tuần"
        assert s.schema_version() == SCHEMA_VERSION


def test_newer_schema_refused(tmp_path: Path) -> None:
    path = tmp_path / "hoinghi.db"
    Storage(path).close()
    raw = sqlite3.connect(path)
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(StorageError, match="newer"):
        Storage(path)


def test_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "hoinghi.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StorageError):
        Storage(path)


def test_meetings(store: Storage) -> None:
    assert store.get_meeting("nope") is None
    m = store.create_meeting("m1", "Họp UBND tỉnh")
    assert (m.id, m.title, m.status, m.locked) == ("m1", "Họp UBND tỉnh", "scheduled", False)
    assert m.created_at > 0
    with pytest.raises(ValueError, match="already exists"):
        store.create_meeting("m1", "again")
    store.create_meeting("m2", "Second")
    assert [x.id for x in store.list_meetings()] == ["m1", "m2"]

    store.set_meeting_status("m1", "live")
    assert store.get_meeting("m1").status == "live"
    with pytest.raises(ValueError):
        store.set_meeting_status("m1", "paused")
    with pytest.raises(KeyError):
        store.set_meeting_status("missing", "ended")

    store.set_meeting_locked("m1", True)
    assert store.get_meeting("m1").locked is True


def test_sites(store: Storage) -> None:
    store.upsert_site(Site("hub", "Trung tâm", "province"))
    store.upsert_site(Site("d1", "Huyện A", "district", "hub"))
    store.upsert_site(Site("c1", "Xã B", "commune", "d1"))
    assert store.get_site("c1") == Site("c1", "Xã B", "commune", "d1")
    store.upsert_site(Site("c1", "Xã B mới", "commune", "d1"))
    assert store.get_site("c1").name == "Xã B mới"
    assert [s.id for s in store.list_sites()] == ["hub", "d1", "c1"]
    assert store.get_site("zz") is None
    with pytest.raises(ValueError, match="level"):
        store.upsert_site(Site("x", "X", "village"))
    with pytest.raises(ValueError, match="parent"):
        store.upsert_site(Site("x", "X", "commune", "no-such-parent"))


def test_level_check_enforced_by_database(store: Storage) -> None:
    # The CHECK constraint protects the table from writers that bypass upsert_site.
    with pytest.raises(sqlite3.IntegrityError):
        store._conn.execute("INSERT INTO sites (id, name, level) VALUES ('x', 'X', 'village')")


def test_site_may_join(store: Storage) -> None:
    store.upsert_site(Site("hub", "Hub", "province"))
    store.upsert_site(Site("d1", "D1", "district", "hub"))
    store.create_meeting("m", "M")
    assert store.site_may_join("m", "d1")
    assert store.site_may_join("m", "unregistered")  # empty list = everyone
    assert not store.site_may_join("no-meeting", "d1")

    store.set_meeting_sites("m", ["hub"])
    assert store.meeting_site_ids("m") == ["hub"]
    assert store.site_may_join("m", "hub")
    assert not store.site_may_join("m", "d1")
    with pytest.raises(ValueError, match="ghost"):
        store.set_meeting_sites("m", ["hub", "ghost"])
    assert store.meeting_site_ids("m") == ["hub"]  # failed replace rolled back
    store.set_meeting_sites("m", [])
    assert store.site_may_join("m", "d1")


def test_events_roundtrip(store: Storage) -> None:
    store.create_meeting("m", "M")
    first = store.add_event("m", "join", site_id="d1", data={"name": "Huyện Một", "n": 1, "ok": True})
    store.add_event("m", "meeting_started")
    for i in range(5):
        store.add_event("m", "tick", data=[i])
    events = store.list_events("m")
    assert [e.kind for e in events] == ["join", "meeting_started"] + ["tick"] * 5
    assert events[0].id == first
    assert events[0].site_id == "d1"
    assert events[0].data == {"name": "Huyện Một", "n": 1, "ok": True}
    assert events[1].data is None and events[1].site_id is None
    assert all(a.ts <= b.ts for a, b in zip(events, events[1:]))
    # limit keeps the newest, still oldest first
    assert [e.data for e in store.list_events("m", limit=2)] == [[3], [4]]
    assert store.list_events("other") == []


def test_event_for_unknown_meeting_rejected(store: Storage) -> None:
    with pytest.raises(sqlite3.IntegrityError):
        store.add_event("nope", "join")


def test_ensure_demo_idempotent(store: Storage) -> None:
    m = store.ensure_demo()
    assert (m.id, m.title) == (DEMO_MEETING_ID, DEMO_MEETING_TITLE)
    hub = store.get_site("hub")
    assert hub is not None and hub.name == "Trung tâm tỉnh" and hub.level == "province"
    sites_before = store.list_sites()
    assert len(sites_before) == 3
    assert {s.level for s in sites_before} == {"province", "district", "commune"}

    store.upsert_site(Site("hub", "Hub đổi tên", "province"))
    store.set_meeting_status("demo", "live")
    again = store.ensure_demo()
    assert again.created_at == m.created_at
    assert again.status == "live"  # not reset
    assert store.get_site("hub").name == "Hub đổi tên"  # operator edits survive
    assert len(store.list_sites()) == 3
    assert [x.id for x in store.list_meetings()] == ["demo"]


def test_concurrent_reader_sees_committed_writes(tmp_path: Path) -> None:
    # Models `hoinghi token` reading while the server holds the database open.
    path = tmp_path / "hoinghi.db"
    with Storage(path) as server, Storage(path) as cli:
        server.create_meeting("m", "M")
        assert cli.get_meeting("m") is not None
        cli.add_event("m", "token_issued", site_id="s")
        assert [e.kind for e in server.list_events("m")] == ["token_issued"]
