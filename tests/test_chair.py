"""Chair control over the signaling socket: requests to speak, floor, spotlight, mutes
enforced in the media path, removal, lock, roll call, link statistics, and what a site's
token may not do. Real server, real tokens, synthetic aiortc sites on loopback."""

from __future__ import annotations

import asyncio
import time

import pytest

import signaling.room as room_mod
from loadtest.peer import SyntheticSite
from testkit import chair, until

pytestmark = pytest.mark.slow


async def _join(server, site_id: str, role: str = "site", media: bool = False, name: str | None = None, **kw) -> SyntheticSite:
    s = SyntheticSite(server.url, server.token(site_id, role, name=name), publish_video=media, publish_audio=media, **kw)
    await s.join()
    if media:
        await s.start_media()
    return s


async def test_site_token_cannot_chair_and_bad_chair_messages(hoinghi_server):
    hub = await _join(hoinghi_server, "hub", "hub")
    site = await _join(hoinghi_server, "xa-a")
    for action, extra in [("mute_all", {}), ("end", {}), ("remove", {"site_id": "hub"}), ("floor", {"site_id": "xa-a"})]:
        err = await chair(site, action, **extra)
        assert (err["type"], err["code"], err["fatal"]) == ("error", "forbidden", False), err
        assert "hub or an operator" in err["message"]
    # nothing happened, and the site's connection still works
    room = hoinghi_server.signaling.rooms["demo"]
    assert room.control.floor is None and not room.control.all_muted and hoinghi_server.storage.get_meeting("demo").status == "scheduled"
    pong = site.wait_for("pong", 2)
    await site.send({"type": "ping", "id": 1})
    await pong

    for msg, code in [({"action": "mute"}, "invalid_message"), ({"action": "lock", "site_id": "xa-a"}, "invalid_message"),
                      ({"action": "fly"}, "invalid_message"), ({"action": "mute", "participant_id": "nobody"}, "not_found"),
                      ({"action": "floor", "site_id": "not-here"}, "not_found"), ({"action": "roll_call_end"}, "no_roll_call")]:
        err = await chair(hub, **msg)
        assert err["type"] == "error" and err["code"] == code and not err["fatal"], (msg, err)
    bad = site.wait_for("error", 2)
    await site.send({"type": "raise_hand", "raised": "yes"})
    assert (await bad)["code"] == "invalid_message"
    for s in (hub, site):
        await s.close()


async def test_hand_floor_spotlight_reach_every_site(hoinghi_server):
    server = hoinghi_server
    hub = await _join(server, "hub", "hub", media=True, name="Trung tâm tỉnh")
    a = await _join(server, "xa-a", media=True, name="Xã A")
    b = await _join(server, "xa-b", media=True, name="Xã B")
    b_id = b.joined["participant"]["id"]
    room = server.signaling.rooms["demo"]

    # request to speak: everyone learns it, the roster entry carries it
    hands = [hub.wait_for("hand", 2), a.wait_for("hand", 2)]
    await b.send({"type": "raise_hand", "raised": True})
    for h in hands:
        msg = await h
        assert (msg["site_id"], msg["participant_id"], msg["raised"], msg["name"]) == ("xa-b", b_id, True, "Xã B")
        assert msg["at"] > 0
    await until(lambda: hub.participants.get(b_id, {}).get("hand") is not None, 2, "hand in roster")

    # giving the floor: a `floor` message within a second; the request to speak is answered
    t0 = time.monotonic()
    floors = [a.wait_for("floor", 1), b.wait_for("floor", 1)]
    lowered = hub.wait_for("hand", 1)
    done = await chair(hub, "floor", participant_id=b_id)
    assert done["type"] == "chair_done" and done["site_id"] == "xa-b"
    for f in floors:
        assert (await f) | {} == {"type": "floor", "participant_id": b_id, "site_id": "xa-b", "name": "Xã B"}
    assert time.monotonic() - t0 < 1.0
    assert (await lowered)["raised"] is False
    assert room.router.floor == b_id and room.control.floor == "xa-b"
    await until(lambda: a.slot_of(b_id) is not None, 3, "floor site in a slot")

    # spotlight overrides the floor for what is shown first; clearing it returns to the floor
    a_id = a.joined["participant"]["id"]
    spot = hub.wait_for("spotlight", 1)
    await chair(hub, "spotlight", site_id="xa-a")
    assert (await spot)["participant_id"] == a_id and room.router.floor == a_id
    await chair(hub, "spotlight")
    assert room.router.floor == b_id

    # the floor survives a reconnection of its site (a new participant id)
    await b.close()
    await until(lambda: room.router.floor is None, 3, "floor freed when the site left")
    b2 = await _join(server, "xa-b", media=True, name="Xã B")
    assert b2.joined["floor"]["site_id"] == "xa-b" and b2.joined["floor"]["participant_id"] == b2.joined["participant"]["id"]
    await until(lambda: room.router.floor == b2.joined["participant"]["id"], 2, "floor follows the site")
    events = [e.kind for e in server.storage.list_events("demo")]
    assert "hand_raised" in events and "floor" in events and "spotlight" in events
    # the router's dominant speaker reaches everyone (all three bots send a steady tone)
    await until(lambda: any(m["type"] == "speaker" and m["participant_id"] for m in a.messages), 5, "a speaker message")
    speaker = next(m for m in a.messages if m["type"] == "speaker" and m["participant_id"])
    assert speaker["site_id"] in ("hub", "xa-a", "xa-b") and speaker["name"]
    for s in (hub, a, b2):
        await s.close()


async def _audio_packets(site: SyntheticSite, source_pid: str) -> int:
    slot = site.slot_of(source_pid, "audio")
    if slot is None:
        return 0
    stats = await site.inbound_stats()
    s = stats.get(slot["mid"])
    return s.packetsReceived if s else 0


async def test_chair_mute_is_enforced_by_the_server_and_survives_rejoin(hoinghi_server):
    server = hoinghi_server
    hub = await _join(server, "hub", "hub", media=True)
    a = await _join(server, "xa-a", media=True)
    a_id = a.joined["participant"]["id"]
    room = server.signaling.rooms["demo"]
    await until(lambda: hub.slot_of(a_id, "audio") is not None, 5, "hub hears a")
    await asyncio.sleep(1.0)
    flowing = await _audio_packets(hub, a_id)
    assert flowing > 0

    told = a.wait_for("muted_by_chair", 1)
    await chair(hub, "mute", site_id="xa-a")
    assert (await told) | {} == {"type": "muted_by_chair", "kind": "audio", "muted": True}
    assert room.router.transports[a_id].producers["audio"].muted is True
    await until(lambda: hub.participants[a_id]["chair_muted"]["audio"] is True, 2, "roster shows the chair mute")
    await asyncio.sleep(0.5)
    before = await _audio_packets(hub, a_id)
    await asyncio.sleep(1.5)
    # the site's client still sends (it is a bot that ignores the message); the server drops it
    assert await _audio_packets(hub, a_id) - before <= 2

    # reconnecting does not shake the mute off
    await a.close()
    a = await _join(server, "xa-a", media=True)
    a_id = a.joined["participant"]["id"]
    assert a.joined["participant"]["chair_muted"] == {"audio": True, "video": False}
    await until(lambda: a_id in room.router.transports and "audio" in room.router.transports[a_id].producers, 5, "a publishing")
    assert room.router.transports[a_id].producers["audio"].muted is True

    told = a.wait_for("muted_by_chair", 1)
    await chair(hub, "unmute", participant_id=a_id)
    assert (await told)["muted"] is False
    await until(lambda: hub.slot_of(a_id, "audio") is not None, 5, "hub hears a again")
    await asyncio.sleep(1.0)
    before = await _audio_packets(hub, a_id)
    await asyncio.sleep(1.0)
    assert await _audio_packets(hub, a_id) - before > 20

    # video too
    await chair(hub, "mute", site_id="xa-a", kind="video")
    assert room.router.transports[a_id].producers["video"].muted is True
    for s in (hub, a):
        await s.close()


async def test_mute_all_remove_lock(hoinghi_server):
    server = hoinghi_server
    hub = await _join(server, "hub", "hub")
    a = await _join(server, "xa-a")
    b = await _join(server, "xa-b")
    await chair(hub, "floor", site_id="xa-b")
    muted = a.wait_for("muted_by_chair", 1)
    done = await chair(hub, "mute_all")
    assert done["sites"] == 1  # a; b holds the floor, the hub is the chair
    assert (await muted)["kind"] == "audio"
    late = await _join(server, "xa-c")
    assert late.joined["participant"]["chair_muted"]["audio"] is True and late.joined["all_muted"] is True
    # while "mute all" holds, the floor's end puts its site back on mute
    back = b.wait_for("muted_by_chair", 1)
    await chair(hub, "floor")
    assert (await back) | {} == {"type": "muted_by_chair", "kind": "audio", "muted": True}
    unmuted = [a.wait_for("muted_by_chair", 1), late.wait_for("muted_by_chair", 1), b.wait_for("muted_by_chair", 1)]
    assert (await chair(hub, "unmute_all"))["sites"] == 3
    assert [(await u)["muted"] for u in unmuted] == [False, False, False]

    # remove: told why, socket closed 4403, refused until readmitted
    bye = a.wait_for("bye", 1)
    left = hub.wait_for("participant_left", 1)
    await chair(hub, "remove", site_id="xa-a")
    assert (await bye)["reason"] == "removed"
    assert (await left)["participant_id"] == a.joined["participant"]["id"]
    await until(lambda: a.ws.closed, 2, "removed socket closed")
    assert a.ws.close_code == 4403
    again = SyntheticSite(server.url, server.token("xa-a"), publish_video=False, publish_audio=False)
    with pytest.raises(ConnectionRefusedError, match="removed"):
        await again.join()
    await again.close()
    await chair(hub, "readmit", site_id="xa-a")
    a = await _join(server, "xa-a")

    # lock: newcomers refused, those already admitted may come back
    locked = [a.wait_for("meeting_locked", 1), b.wait_for("meeting_locked", 1)]
    await chair(hub, "lock")
    assert [(await x)["locked"] for x in locked] == [True, True]
    stranger = SyntheticSite(server.url, server.token("xa-z"), publish_video=False, publish_audio=False)
    with pytest.raises(ConnectionRefusedError, match="meeting_locked"):
        await stranger.join()
    await stranger.close()
    await b.close()
    b = await _join(server, "xa-b")
    assert b.joined["meeting"]["locked"] is True
    await chair(hub, "unlock")
    stranger = await _join(server, "xa-z")
    for s in (hub, a, b, late, stranger):
        await s.close()


async def test_roll_call_over_signaling(hoinghi_server):
    server = hoinghi_server
    hub = await _join(server, "hub", "hub")
    a = await _join(server, "xa-a", name="Xã A")
    b = await _join(server, "xa-b")
    calls = [hub.wait_for("roll_call", 2), a.wait_for("roll_call", 2)]
    done = await chair(hub, "roll_call_start")
    rc = done["roll_call_id"]
    hub_view, a_view = [await c for c in calls]
    assert hub_view["active"] and hub_view["counts"]["no_answer"] == 2  # demo registry: 2 sites expected + 2 connected
    assert a_view == {"type": "roll_call", "id": rc, "active": True, "started_at": a_view["started_at"], "ended_at": None, "answered": False}

    update = hub.wait_for("roll_call", 2)
    mine = a.wait_for("roll_call", 2)
    await a.send({"type": "roll_call_answer", "roll_call_id": rc})
    assert (await mine)["answered"] is True
    results = {r["site_id"]: r for r in (await update)["results"]}
    assert results["xa-a"]["status"] == "present" and results["xa-a"]["name"] == "Xã A" and results["xa-a"]["answered_at"]
    assert results["xa-b"]["status"] == "no_answer" and results["commune-demo"]["status"] == "absent"

    # a site joining during the roll call is asked too
    c = SyntheticSite(server.url, server.token("xa-c"), publish_video=False, publish_audio=False)
    asked = c.wait_for("roll_call", 3)
    await c.join()
    assert (await asked)["active"] is True

    ended = b.wait_for("roll_call", 2)
    await chair(hub, "roll_call_end")
    assert (await ended)["active"] is False
    err = await chair(b, "roll_call_start")
    assert err["code"] == "forbidden"
    statuses = {x.site_id: x.status for x in server.storage.attendance(rc)}
    assert statuses == {"xa-a": "present", "xa-b": "no_answer", "xa-c": "no_answer", "district-demo": "absent", "commune-demo": "absent"}
    for s in (hub, a, b, c):
        await s.close()


async def test_link_stats_tell_each_site_what_it_receives(hoinghi_server, monkeypatch):
    monkeypatch.setattr(room_mod, "STATS_INTERVAL", 0.3)
    server = hoinghi_server
    hub = await _join(server, "hub", "hub", media=True, name="Trung tâm tỉnh")
    a = await _join(server, "xa-a", media=True)
    hub_id, a_id = hub.joined["participant"]["id"], a.joined["participant"]["id"]

    async def next_stats(site: SyntheticSite, ok) -> dict:
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            msg = await site.wait_for("link_stats", 2)
            if ok(msg):
                return msg
        raise AssertionError("no matching link_stats")

    def receiving_video(msg):
        return [r for r in msg["self"].get("receiving", []) if r["kind"] == "video" and (r.get("bitrate") or 0) > 0]

    msg = await next_stats(a, lambda m: receiving_video(m) and (m["self"].get("bitrate_out") or 0) > 0)
    own = msg["self"]
    assert "participants" not in msg  # a site sees only its own link
    video = receiving_video(msg)[0]
    assert (video["participant_id"], video["site_id"], video["name"]) == (hub_id, "hub", "Trung tâm tỉnh")
    # the router's own reason when it gives one (the allocator's "ok"), else what the streams tell
    assert video["reason"] in ("ok", "single_layer") and "layer" in video and "loss" in video
    assert own["media"] is True and own["loss_in"] >= 0 and own["video_layers"] == 1
    assert set(own["sending"]) == {"audio", "video"}

    hub_msg = await next_stats(hub, lambda m: (m.get("participants", {}).get(a_id) or {}).get("bitrate_in"))
    entry = hub_msg["participants"][a_id]
    assert entry["media"] is True and entry["bitrate_in"] > 10_000
    assert {"rtt_ms", "estimated_bps", "loss_in", "loss_out", "layer", "bitrate_out"} <= set(entry)

    # a chair mute shows up as the reason on the receiving side
    await chair(hub, "mute", site_id="xa-a", kind="video")
    msg = await next_stats(hub, lambda m: any(r.get("reason") == "muted_by_chair" for r in m["self"].get("receiving", [])))
    assert any(r["participant_id"] == a_id for r in msg["self"]["receiving"] if r.get("reason") == "muted_by_chair")
    for s in (hub, a):
        await s.close()


async def test_end_over_signaling_sends_everyone_away(hoinghi_server):
    server = hoinghi_server
    hub = await _join(server, "hub", "hub")
    a = await _join(server, "xa-a")
    await a.send({"type": "raise_hand", "raised": True})
    byes = [hub.wait_for("bye", 2), a.wait_for("bye", 2)]
    await hub.send({"type": "chair", "action": "end"})
    assert [(await b)["reason"] for b in byes] == ["meeting_ended", "meeting_ended"]
    assert server.storage.get_meeting("demo").status == "ended"
    assert "demo" not in server.signaling.controls and "demo" not in server.signaling.rooms
    for s in (hub, a):
        await s.close()


async def test_pinned_sites_keep_their_thumbnails(hoinghi_server):
    """Pins rank right after the floor: a receiver with one thumbnail shows the pinned site,
    not the one that joined earlier; unpinning gives the thumbnail back; pins hold by site."""
    server = hoinghi_server
    hub = await _join(server, "hub", "hub")

    async def publisher(sid: str) -> SyntheticSite:
        s = SyntheticSite(server.url, server.token(sid, name=sid.upper()), publish_audio=False)
        await s.join()
        await s.start_media(video_slots=1, audio_slots=1)
        return s

    pubs = {sid: await publisher(sid) for sid in ("xa-a", "xa-b", "xa-c")}
    pid = {sid: s.joined["participant"]["id"] for sid, s in pubs.items()}
    viewer = await _join(server, "xa-v")
    await viewer.start_media(video_slots=2, audio_slots=1)
    room = server.signaling.rooms["demo"]

    def shown() -> list:
        return [s["participant_id"] for s in viewer.slots["video"]]

    await chair(hub, "floor", site_id="xa-a")
    await until(lambda: shown() == [pid["xa-a"], pid["xa-b"]], 5, "floor + first joined")
    pins = viewer.wait_for("pins", 2)
    done = await chair(hub, "pin", site_id="xa-c")
    assert done["pins"] == ["xa-c"]
    assert (await pins)["pins"] == [{"participant_id": pid["xa-c"], "site_id": "xa-c", "name": "XA-C"}]
    await until(lambda: shown() == [pid["xa-a"], pid["xa-c"]], 3, "pinned site in the thumbnail")
    assert room.router.pinned == [pid["xa-c"]]
    # a second pin ranks after the first; unpinning the first lets the second in
    assert (await chair(hub, "pin", site_id="xa-b"))["pins"] == ["xa-c", "xa-b"]
    await asyncio.sleep(0.3)
    assert shown() == [pid["xa-a"], pid["xa-c"]]
    assert (await chair(hub, "unpin", participant_id=pid["xa-c"]))["pins"] == ["xa-b"]
    await until(lambda: shown() == [pid["xa-a"], pid["xa-b"]], 3, "second pin in the thumbnail")
    # a pin is kept by site: the site reconnects with a new participant id and stays pinned
    await pubs["xa-b"].close()
    pubs["xa-b"] = await publisher("xa-b")
    assert pubs["xa-b"].joined["pins"][0]["site_id"] == "xa-b"
    await until(lambda: room.router.pinned == [pubs["xa-b"].joined["participant"]["id"]], 3, "pin follows the site")
    # at most MAX_PINS; a site cannot pin
    err = await chair(pubs["xa-a"], "pin", site_id="xa-c")
    assert err["code"] == "forbidden"
    for i in range(7):
        await chair(hub, "pin", site_id=f"xa-x{i}")
    err = await chair(hub, "pin", site_id="xa-y")
    assert err["type"] == "error" and err["code"] == "too_many_pins"
    assert (await chair(hub, "unpin_all"))["pins"] == []
    assert room.router.pinned == []
    events = [e.kind for e in server.storage.list_events("demo")]
    assert "pin" in events and "unpin" in events and "unpin_all" in events
    for s in (hub, viewer, *pubs.values()):
        await s.close()
