"""Admin REST API (server/admin.py) against a real server: real SQLite file, real tokens,
real WebSocket participants (signaling only, no media) where an action must reach a site."""

from __future__ import annotations

import csv
import io
import time
from unittest import mock

import aiohttp
import pytest

import server.admin as admin_mod
import server.auth as auth_mod
from loadtest.peer import SyntheticSite
from server.storage import SAMPLE_SITES_CSV


@pytest.fixture
async def api(hoinghi_server):
    """(server, http session, hub auth headers); the sample registry is loaded."""
    async with aiohttp.ClientSession() as http:
        hub = {"Authorization": "Bearer " + hoinghi_server.token("hub", "hub", name="Trung tâm tỉnh")}
        async with http.post(hoinghi_server.url + "/api/sites/import?sample=1", headers=hub) as r:
            assert r.status == 200, await r.text()
        yield hoinghi_server, http, hub


async def _json(resp: aiohttp.ClientResponse, status: int) -> dict:
    body = await resp.json()
    assert resp.status == status, body
    return body


async def _site(server, site_id: str, meeting: str = "demo", name: str | None = None) -> SyntheticSite:
    s = SyntheticSite(server.url, server.token(site_id, "site", meeting=meeting, name=name), publish_video=False, publish_audio=False)
    await s.join()
    return s


# ------------------------------------------------------------------ authentication


async def test_bad_auth_gets_clear_json_errors(api):
    server, http, hub = api
    url = server.url + "/api/meetings"
    async with http.get(url) as r:
        body = await _json(r, 401)
        assert body["error"] == "auth_missing" and "Authorization: Bearer" in body["message"]
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
    async with http.get(url, headers={"Authorization": "Bearer not.a.token"}) as r:
        assert (await _json(r, 401))["error"] == "auth_invalid"
    async with http.get(url, headers={"Authorization": "Basic aHViOmh1Yg=="}) as r:
        assert (await _json(r, 401))["error"] == "auth_missing"
    with mock.patch.object(auth_mod.time, "time", return_value=time.time() - 3 * 3600):
        old = server.token("hub", "hub", ttl=3600)
    async with http.get(url, headers={"Authorization": f"Bearer {old}"}) as r:
        body = await _json(r, 401)
        assert body["error"] == "auth_expired" and "new hub link" in body["message"]
    site = {"Authorization": "Bearer " + server.token("tp-ninh-binh.dong-thanh", "site")}
    for method, path in [("GET", "/api/meetings"), ("GET", "/api/sites"), ("POST", "/api/meetings/demo/start"),
                         ("GET", "/api/meetings/demo/attendance.csv")]:
        async with http.request(method, server.url + path, headers=site) as r:
            body = await _json(r, 403)
            assert body["error"] == "forbidden" and "hub's link" in body["message"]
    # nothing was started by the refused request
    assert server.storage.get_meeting("demo").status == "scheduled"


async def test_operator_manages_only_its_own_meeting(api):
    server, http, hub = api
    server.storage.create_meeting("other", "Họp khác")
    op = {"Authorization": "Bearer " + server.token("op-1", "operator", meeting="demo")}
    async with http.get(server.url + "/api/meetings", headers=op) as r:
        assert [m["id"] for m in (await _json(r, 200))["meetings"]] == ["demo"]
    async with http.get(server.url + "/api/meetings/demo", headers=op) as r:
        await _json(r, 200)
    async with http.post(server.url + "/api/meetings/other/start", headers=op) as r:
        assert "own meeting (demo)" in (await _json(r, 403))["message"]
    async with http.post(server.url + "/api/meetings", headers=op, json={"title": "X"}) as r:
        await _json(r, 403)  # creating meetings is the hub's
    async with http.post(server.url + "/api/sites/import?sample=1", headers=op) as r:
        await _json(r, 403)
    async with http.get(server.url + "/api/me", headers=op) as r:
        me = await _json(r, 200)
        assert (me["role"], me["meeting_id"], me["site_id"]) == ("operator", "demo", "op-1")


# ------------------------------------------------------------------ site registry


async def test_site_registry_import_and_export(api):
    server, http, hub = api
    async with http.get(server.url + "/api/sites", headers=hub) as r:
        sites = (await _json(r, 200))["sites"]
    by_level = {lvl: [s for s in sites if s["level"] == lvl] for lvl in ("province", "district", "commune")}
    sample = list(csv.DictReader(io.StringIO(SAMPLE_SITES_CSV.read_text(encoding="utf-8"))))
    assert len(sample) == 164
    assert {s["id"] for s in sample} <= {s["id"] for s in sites}
    assert len([s for s in sample if s["level"] == "district"]) == 8
    # every commune belongs to a district, every district to the hub
    ids = {s["id"]: s for s in sites}
    assert all(ids[c["parent_id"]]["level"] == "district" for c in by_level["commune"] if c["id"] != "commune-demo" and c["parent_id"] != "district-demo")

    # A bad file: every problem named by line, nothing changed.
    bad = "id,name,level,parent_id\nxa-moi,Xã Mới,xã,khong-co\nXa Sai,Tên,xã,nho-quan\nnho-quan.x,,commune,nho-quan\n"
    async with http.post(server.url + "/api/sites/import", headers=hub, data=bad.encode()) as r:
        body = await _json(r, 400)
    assert body["error"] == "invalid_csv" and "nothing was imported" in body["message"]
    text = " | ".join(body["errors"])
    assert "line 2" in text and "khong-co" in text and "line 3" in text and "line 4" in text
    async with http.post(server.url + "/api/sites/import", headers=hub, data="id,name\n".encode("utf-16")) as r:
        assert (await _json(r, 400))["error"] == "not_utf8"
    assert server.storage.get_site("xa-moi") is None

    # Excel-style file: BOM, semicolons, Vietnamese level names; replace drops the demo trio.
    good = "\ufeffid;name;level;parent_id\n" + "\n".join(
        ";".join([s["id"], s["name"], {"province": "tỉnh", "district": "huyện", "commune": "xã"}[s["level"]], s["parent_id"]])
        for s in sample
    ) + "\nnho-quan.xa-moi;UBND xã Mới;xa;nho-quan\n"
    async with http.post(server.url + "/api/sites/import?replace=1", headers=hub, data=good.encode()) as r:
        counts = await _json(r, 200)
    assert counts == {"added": 1, "updated": 0, "removed": 2, "total": 165}
    assert server.storage.get_site("commune-demo") is None
    assert server.storage.get_site("nho-quan.xa-moi").level == "commune"
    async with http.get(server.url + "/api/sites?format=csv", headers=hub) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/csv")
        exported = (await r.read()).decode("utf-8-sig")
    assert len(list(csv.DictReader(io.StringIO(exported)))) == 165


# ------------------------------------------------------------------ meetings


async def test_meeting_crud_schedule_and_site_selection(api):
    server, http, hub = api
    base = server.url + "/api/meetings"
    when = int(time.mktime((2030, 12, 10, 8, 0, 0, 0, 0, -1)) * 1000)
    body = {"title": "Giao ban tuần — huyện Nho Quan", "scheduled_at": when, "duration_min": 90,
            "sites": {"mode": "districts", "district_ids": ["nho-quan"]}}
    async with http.post(base, headers=hub, json=body) as r:
        m = await _json(r, 201)
    assert m["id"] == "2030-12-10-giao-ban-tuan-huyen-nho-quan"
    assert (m["status"], m["scheduled_at"], m["duration_min"]) == ("scheduled", when, 90)
    assert m["sites"]["mode"] == "list" and m["sites"]["count"] == 28  # the district + its 27 communes
    assert "nho-quan" in m["sites"]["site_ids"] and "nho-quan.cuc-phuong" in m["sites"]["site_ids"]
    mid = m["id"]
    assert server.storage.site_may_join(mid, "nho-quan.gia-lam")
    assert not server.storage.site_may_join(mid, "kim-son.phat-diem")

    async with http.post(base, headers=hub, json=body) as r:  # same title and day: a new id
        assert (await _json(r, 201))["id"] == mid + "-2"
    async with http.post(base, headers=hub, json={**body, "id": mid}) as r:
        assert (await _json(r, 409))["error"] == "meeting_exists"
    for bad, fragment in [({"title": ""}, "title"), ({"title": "x", "colour": "red"}, "colour"),
                          ({"title": "x", "sites": {"mode": "list", "site_ids": ["khong-co"]}}, "khong-co"),
                          ({"title": "x", "sites": {"mode": "districts", "district_ids": ["nho-quan.gia-lam"]}}, "nho-quan.gia-lam"),
                          ({"title": "x", "duration_min": 0}, "duration_min")]:
        async with http.post(base, headers=hub, json=bad) as r:
            assert r.status == 400 and fragment in (await r.json())["message"], bad
    async with http.post(base, headers=hub, data=b"{nope") as r:
        assert (await _json(r, 400))["error"] == "bad_json"

    later = when + 3600_000
    async with http.patch(f"{base}/{mid}", headers=hub, json={"title": "Giao ban (dời giờ)", "scheduled_at": later,
                                                              "sites": {"mode": "list", "site_ids": ["kim-son", "kim-son.phat-diem"]}}) as r:
        m = await _json(r, 200)
    assert (m["title"], m["scheduled_at"], m["sites"]["site_ids"]) == ("Giao ban (dời giờ)", later, ["kim-son", "kim-son.phat-diem"])
    async with http.put(f"{base}/{mid}/sites", headers=hub, json={"sites": {"mode": "all"}}) as r:
        m = await _json(r, 200)
    assert m["sites"]["mode"] == "all" and m["sites"]["count"] == 165  # every district and commune (incl. the demo two)
    async with http.get(base, headers=hub) as r:
        listed = {x["id"] for x in (await _json(r, 200))["meetings"]}
    assert {"demo", mid, mid + "-2"} <= listed
    async with http.delete(f"{base}/{mid}-2", headers=hub) as r:
        await _json(r, 200)
    async with http.get(f"{base}/{mid}-2", headers=hub) as r:
        assert (await _json(r, 404))["error"] == "meeting_not_found"
    kinds = [e.kind for e in server.storage.list_events(mid)]
    assert kinds[:3] == ["meeting_created", "meeting_updated", "sites_selected"]


async def test_links_are_one_click_joins_for_the_chosen_sites(api):
    server, http, hub = api
    async with http.post(server.url + "/api/meetings", headers=hub, json={
        "title": "Họp Hoa Lư", "id": "hoa-lu-1", "sites": {"mode": "districts", "district_ids": ["hoa-lu"]}}) as r:
        await _json(r, 201)
    async with http.post(server.url + "/api/meetings/hoa-lu-1/links", headers=hub, json={"hub": True}) as r:
        out = await _json(r, 200)
    assert len(out["links"]) == 14  # the district and its 13 communes
    assert next(x for x in out["links"] if x["site_id"] == "hoa-lu")["district"] == "UBND huyện Hoa Lư"
    link = next(x for x in out["links"] if x["site_id"] == "hoa-lu.truong-yen")
    assert link["name"] == "UBND xã Trường Yên" and link["district"] == "UBND huyện Hoa Lư" and link["role"] == "site"
    assert link["url"].startswith(server.url + "/site#t=")
    claims = server.tokens.verify(link["url"].split("#t=", 1)[1])
    assert (claims.meeting_id, claims.site_id, claims.role, claims.name) == ("hoa-lu-1", "hoa-lu.truong-yen", "site", "UBND xã Trường Yên")
    assert claims.expires_at * 1000 == pytest.approx(out["expires_at"], abs=2000)
    assert out["hub"]["url"].startswith(server.url + "/hub#t=")
    # the link really joins
    site = SyntheticSite(server.url, link["url"].split("#t=", 1)[1], publish_video=False, publish_audio=False)
    joined = await site.join()
    assert joined["meeting"]["id"] == "hoa-lu-1" and joined["participant"]["name"] == "UBND xã Trường Yên"
    await site.close()

    async with http.post(server.url + "/api/meetings/hoa-lu-1/links", headers=hub, json={"site_ids": ["kim-son.phat-diem"]}) as r:
        assert (await _json(r, 400))["error"] == "not_invited"
    async with http.post(server.url + "/api/meetings/hoa-lu-1/links?format=csv", headers=hub,
                         json={"site_ids": ["hoa-lu.ninh-hai"], "ttl_s": 600}) as r:
        rows = list(csv.reader(io.StringIO((await r.read()).decode("utf-8-sig"))))
    assert rows[0] == ["site_id", "name", "district", "url"] and rows[1][:3] == ["hoa-lu.ninh-hai", "UBND xã Ninh Hải", "UBND huyện Hoa Lư"]


async def test_start_end_and_lock_reach_connected_sites(api):
    server, http, hub = api
    a = await _site(server, "yen-mo.mai-son", name="UBND xã Mai Sơn")
    async with http.post(server.url + "/api/meetings/demo/start", headers=hub) as r:
        m = (await _json(r, 200))["meeting"]
    assert m["status"] == "live" and m["started_at"] and m["connected"] == 1
    assert (await a.wait_for("meeting_status", 2))["status"] == "live"

    locked = a.wait_for("meeting_locked", 2)
    async with http.post(server.url + "/api/meetings/demo/actions", headers=hub, json={"action": "lock"}) as r:
        await _json(r, 200)
    assert (await locked)["locked"] is True
    late = SyntheticSite(server.url, server.token("yen-mo.yen-lam"), publish_video=False, publish_audio=False)
    with pytest.raises(ConnectionRefusedError, match="meeting_locked"):
        await late.join()
    await late.close()
    # a site that was already in may come back (a dropped line must not lock it out)
    await a.close()
    a = await _site(server, "yen-mo.mai-son")
    async with http.post(server.url + "/api/meetings/demo/actions", headers=hub, json={"action": "unlock"}) as r:
        await _json(r, 200)
    late = await _site(server, "yen-mo.yen-lam")

    async with http.post(server.url + "/api/meetings/demo/actions", headers=hub, json={"action": "mute"}) as r:
        assert "participant_id or site_id" in (await _json(r, 400))["message"]
    async with http.post(server.url + "/api/meetings/demo/actions", headers=hub, json={"action": "floor", "site_id": "kim-son"}) as r:
        assert (await _json(r, 404))["error"] == "not_found"

    byes = [a.wait_for("bye", 3), late.wait_for("bye", 3)]
    async with http.post(server.url + "/api/meetings/demo/end", headers=hub) as r:
        assert (await _json(r, 200))["meeting"]["status"] == "ended"
    assert [(await b)["reason"] for b in byes] == ["meeting_ended", "meeting_ended"]
    assert "demo" not in server.signaling.rooms
    again = SyntheticSite(server.url, server.token("yen-mo.mai-son"), publish_video=False, publish_audio=False)
    with pytest.raises(ConnectionRefusedError, match="meeting_ended"):
        await again.join()
    async with http.post(server.url + "/api/meetings/demo/links", headers=hub) as r:
        assert (await _json(r, 409))["error"] == "meeting_ended"
    for s in (a, late, again):
        await s.close()
    async with http.get(server.url + "/api/meetings/demo/events", headers=hub) as r:
        events = await _json(r, 200)
    kinds = [e["kind"] for e in events["events"]]
    for kind in ("meeting_started", "lock", "unlock", "join", "leave", "meeting_ended"):
        assert kind in kinds
    join = next(e for e in events["events"] if e["kind"] == "join")
    assert join["site_name"] == "UBND xã Mai Sơn" and join["ts"] > 0
    async with http.get(server.url + f"/api/meetings/demo/events?after={events['last_id']}", headers=hub) as r:
        assert (await _json(r, 200))["events"] == []


async def test_roll_call_attendance_and_csv(api):
    server, http, hub = api
    async with http.put(server.url + "/api/meetings/demo/sites", headers=hub,
                        json={"sites": {"mode": "list", "site_ids": ["kim-son.phat-diem", "kim-son.kim-hai", "kim-son.con-thoi"]}}) as r:
        await _json(r, 200)
    a = await _site(server, "kim-son.phat-diem", name="UBND thị trấn Phát Diệm")
    b = await _site(server, "kim-son.kim-hai")
    calls = [a.wait_for("roll_call", 2), b.wait_for("roll_call", 2)]
    async with http.post(server.url + "/api/meetings/demo/actions", headers=hub, json={"action": "roll_call_start"}) as r:
        rc_id = (await _json(r, 200))["roll_call_id"]
    for c in calls:
        msg = await c
        assert (msg["id"], msg["active"], msg["answered"]) == (rc_id, True, False)
        assert "results" not in msg  # sites see only their own state
    answered = a.wait_for("roll_call", 2)
    await a.send({"type": "roll_call_answer", "roll_call_id": rc_id})
    assert (await answered)["answered"] is True
    async with http.get(server.url + "/api/meetings/demo/roster", headers=hub) as r:
        roster = await _json(r, 200)
    assert roster["counts"] == {"expected": 3, "joined": 2, "hands": 0}
    assert [g["district"]["id"] for g in roster["groups"]] == ["kim-son"]
    async with http.post(server.url + "/api/meetings/demo/actions", headers=hub, json={"action": "roll_call_end"}) as r:
        await _json(r, 200)
    late = b.wait_for("error", 2)
    await b.send({"type": "roll_call_answer", "roll_call_id": rc_id, "id": "late"})
    err = await late
    assert (err["code"], err["ref"], err["fatal"]) == ("roll_call_closed", "late", False)

    async with http.get(server.url + "/api/meetings/demo/attendance", headers=hub) as r:
        att = await _json(r, 200)
    assert att["roll_calls"][0]["counts"] == {"present": 1, "no_answer": 1, "absent": 1}
    status = {s["site_id"]: s["roll_calls"][0]["status"] for s in att["sites"]}
    assert status == {"kim-son.phat-diem": "present", "kim-son.kim-hai": "no_answer", "kim-son.con-thoi": "absent"}
    assert next(s for s in att["sites"] if s["site_id"] == "kim-son.phat-diem")["first_join"]

    async with http.get(server.url + "/api/meetings/demo/attendance.csv", headers=hub) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/csv")
        assert "diem-danh-demo.csv" in r.headers["Content-Disposition"]
        raw = await r.read()
    assert raw.startswith("\ufeff".encode())
    rows = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"))))
    assert rows[0][:3] == ["Mã điểm cầu", "Tên điểm cầu", "Huyện/thành phố"] and rows[0][6].startswith("Điểm danh lần 1")
    by_site = {row[0]: row for row in rows[1:]}
    assert by_site["kim-son.phat-diem"][1] == "UBND thị trấn Phát Diệm" and by_site["kim-son.phat-diem"][2] == "UBND huyện Kim Sơn"
    assert by_site["kim-son.phat-diem"][6].startswith("Có mặt ")
    assert by_site["kim-son.kim-hai"][6] == "Không trả lời" and by_site["kim-son.con-thoi"][6] == "Vắng"
    assert by_site["kim-son.phat-diem"][4] == "đang họp"
    async with http.get(server.url + "/api/meetings/demo/attendance?format=csv&lang=en", headers=hub) as r:
        assert (await r.read()).decode("utf-8-sig").startswith("Site ID,Site name,District")
    await a.close()
    await b.close()


# ------------------------------------------------------------------ link check


async def test_link_check_endpoints_are_bounded(hoinghi_server, monkeypatch):
    url = hoinghi_server.url
    async with aiohttp.ClientSession() as http:
        async with http.get(url + "/check") as r:
            assert r.status == 200 and "text/html" in r.headers["Content-Type"]
        async with http.get(url + "/api/check/download?bytes=300000") as r:
            assert r.status == 200 and len(await r.read()) == 300000
            assert r.headers["Cache-Control"] == "no-store"
        for bad in ("0", "abc", str(admin_mod.CHECK_MAX_BYTES + 1)):
            async with http.get(url + f"/api/check/download?bytes={bad}") as r:
                assert r.status == 400 and "bytes must be" in (await r.json())["message"]
        async with http.post(url + "/api/check/upload", data=b"x" * 200_000) as r:
            body = await r.json()
            assert r.status == 200 and body["bytes"] == 200_000 and body["ms"] >= 0
        async with http.post(url + "/api/check/upload", data=b"x" * (admin_mod.CHECK_MAX_BYTES + 1)) as r:
            assert r.status == 413 and (await r.json())["error"] == "too_large"

        monkeypatch.setattr(admin_mod, "CHECK_BUDGET_BYTES", 1_000_000)
        monkeypatch.setattr(admin_mod, "CHECK_REFILL_BPS", 1)
        statuses = []
        for _ in range(4):
            async with http.get(url + "/api/check/download?bytes=400000") as r:
                statuses.append(r.status)
                if r.status == 429:
                    assert r.headers["Retry-After"] and (await r.json())["error"] == "rate_limited"
        assert 429 in statuses and statuses[0] == 200
