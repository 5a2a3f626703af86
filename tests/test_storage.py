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


# ---------------------------------------------------------------- schema 2: schedule, registry import, roll calls


def test_version_1_database_is_migrated_in_place(tmp_path: Path) -> None:
    from server.storage import _MIGRATIONS, _split_sql

    path = tmp_path / "hoinghi.db"
    raw = sqlite3.connect(path)
    for statement in _split_sql(_MIGRATIONS[0]):
        raw.execute(statement)
    raw.execute("INSERT INTO meetings (id, title, created_at) VALUES ('old', 'Họp cũ', 1.0)")
    raw.execute("INSERT INTO events (meeting_id, ts, kind) VALUES ('old', 2.0, 'join')")
    raw.execute("PRAGMA user_version = 1")
    raw.commit()
    raw.close()
    with Storage(path) as s:
        assert s.schema_version() == SCHEMA_VERSION >= 2
        m = s.get_meeting("old")
        assert (m.title, m.scheduled_at, m.started_at, m.ended_at) == ("Họp cũ", None, None, None)
        assert [e.kind for e in s.list_events("old")] == ["join"]
        assert s.list_roll_calls("old") == []


def test_schedule_status_stamps_update_delete(store: Storage) -> None:
    m = store.create_meeting("m", "Giao ban", scheduled_at=1_900_000_000.0, duration_min=90)
    assert (m.scheduled_at, m.duration_min, m.started_at) == (1_900_000_000.0, 90, None)
    store.set_meeting_status("m", "live")
    started = store.get_meeting("m").started_at
    assert started is not None
    store.set_meeting_status("m", "ended")
    assert store.get_meeting("m").ended_at >= started
    store.set_meeting_status("m", "live")  # reopened: started_at kept, ended_at cleared
    assert store.get_meeting("m").started_at == started and store.get_meeting("m").ended_at is None
    m = store.update_meeting("m", title="Giao ban (dời)", scheduled_at=None)
    assert (m.title, m.scheduled_at, m.duration_min) == ("Giao ban (dời)", None, 90)
    store.add_event("m", "join", "x")
    store.delete_meeting("m")
    assert store.get_meeting("m") is None and store.list_events("m") == []
    with pytest.raises(KeyError):
        store.delete_meeting("m")


def test_sites_csv_import_rules(store: Storage) -> None:
    from server.storage import SiteImportError

    # any row order; Excel's BOM and semicolons; Vietnamese level names
    counts = store.import_sites_csv("\ufeffid;name;level;parent_id\nd1.c1;Xã Một;xã;d1\nd1;Huyện Một;huyện;p\np;Tỉnh;tỉnh;\n")
    assert counts == {"added": 3, "updated": 0, "removed": 0, "total": 3}
    assert store.get_site("d1.c1") == Site("d1.c1", "Xã Một", "commune", "d1")
    bad = (
        "id,name,level,parent_id\n"
        "Có Dấu,X,commune,d1\n"  # id with accents and capitals
        "d1,Trùng,district,p\n"  # fine on its own...
        "d1,Trùng lần hai,district,p\n"  # ...but used twice
        "c9,Xã,village,d1\n"  # unknown level
        "c8,Xã,commune,\n"  # commune without parent
        "p2,Tỉnh,province,p\n"  # province with a parent
        "c7,Xã,commune,nowhere\n"  # unknown parent
        "d9,Huyện,district,d1.c1\n"  # a district under a commune
    )
    with pytest.raises(SiteImportError) as exc:
        store.import_sites_csv(bad)
    text = "\n".join(exc.value.errors)
    for fragment in ["line 2", "line 4: id 'd1' already used on line 3", "line 5", "line 6", "line 7", "line 8: parent_id 'nowhere'", "line 9"]:
        assert fragment in text, (fragment, text)
    assert len(store.list_sites()) == 3  # all or nothing
    with pytest.raises(SiteImportError, match="cannot belong"):  # so no loops either
        store.import_sites_csv("id,name,level,parent_id\na,A,district,b\nb,B,district,a\n")
    with pytest.raises(SiteImportError, match="missing column"):
        store.import_sites_csv("ma,ten\n")
    with pytest.raises(SiteImportError, match="empty"):
        store.import_sites_csv("")

    # replace: sites missing from the file go, with their invitations
    store.create_meeting("m", "M")
    store.set_meeting_sites("m", ["d1", "d1.c1"])
    counts = store.import_sites_csv("id,name,level,parent_id\np,Tỉnh mới,province,\nd1,Huyện Một,district,p\n", replace=True)
    assert counts == {"added": 0, "updated": 1, "removed": 1, "total": 2}
    assert store.meeting_site_ids("m") == ["d1"]
    # export reads back the same
    assert store.sites_csv().splitlines() == ["id,name,level,parent_id", "p,Tỉnh mới,province,", "d1,Huyện Một,district,p"]


def test_sample_registry_is_164_sites_of_one_province(store: Storage) -> None:
    store.ensure_demo()
    store.load_sample_sites(replace=True)
    sites = store.list_sites()
    by_level = {lvl: [s for s in sites if s.level == lvl] for lvl in ("province", "district", "commune")}
    assert (len(sites), len(by_level["province"]), len(by_level["district"])) == (164, 1, 8)
    districts = {d.id for d in by_level["district"]}
    assert all(d.parent_id == "hub" for d in by_level["district"])
    assert all(c.parent_id in districts for c in by_level["commune"])
    assert store.get_site("hub").name.startswith("Trung tâm tỉnh")
    # the demo sites do not come back once the operator has a registry
    store.ensure_demo()
    assert len(store.list_sites()) == 164


def test_roll_call_attendance(store: Storage) -> None:
    store.create_meeting("m", "M")
    rc = store.start_roll_call("m", [("a", "Xã A", True), ("b", "Xã B", True), ("c", "Xã C", False)], started_by="hub")
    assert rc.active and rc.started_by == "hub"
    assert store.answer_roll_call(rc.id, "a", "Xã A") is True
    assert store.answer_roll_call(rc.id, "a", "Xã A") is False  # once
    store.mark_roll_call_connected(rc.id, "c", "Xã C")
    assert store.answer_roll_call(rc.id, "d", "Xã D (not expected)") is True
    ended = store.end_roll_call(rc.id)
    assert not ended.active and ended.ended_at >= rc.started_at
    assert store.answer_roll_call(rc.id, "b", "Xã B") is False  # too late
    assert {a.site_id: a.status for a in store.attendance(rc.id)} == {
        "a": "present", "b": "no_answer", "c": "no_answer", "d": "present"}
    rc2 = store.start_roll_call("m", [])
    store.end_open_roll_calls("m")
    assert [r.active for r in store.list_roll_calls("m")] == [False, False] and rc2.id != rc.id
