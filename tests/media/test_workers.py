"""Media in worker processes: one meeting served by two workers, streams piped once,
and a worker that dies is replaced while the meeting goes on.

Real aiortc peers on loopback (real ICE/DTLS/SRTP, VP8 and Opus encoded and decoded by the
peers); the server runs media/pool.py with two media/worker.py processes, as
`hoinghi serve` does by default.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import aiohttp
import pytest

from loadtest.peer import SyntheticSite
from server.app import POOL_KEY

pytestmark = pytest.mark.slow

FPS = 15


async def _wait(predicate, timeout: float = 10.0, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(step)
    return predicate()


async def _start(server, site: str, role: str = "site", **kw) -> SyntheticSite:
    kw.setdefault("fps", FPS)
    peer = SyntheticSite(server.url, server.token(site, role), publish_video=True, publish_audio=True, **kw)
    await peer.join()
    await peer.start_media()
    return peer


def _frames(peer: SyntheticSite, publisher: SyntheticSite, kind: str = "video") -> int:
    track = peer.track_for(publisher.joined["participant"]["id"], kind)
    return track.frames if track else 0


def _pid(peer: SyntheticSite) -> str:
    return peer.joined["participant"]["id"]


async def _close(*peers) -> None:
    await asyncio.gather(*(p.close() for p in peers), return_exceptions=True)


async def test_meeting_spread_over_two_workers_forwards_everyone(hoinghi_workers):
    pool = hoinghi_workers.server.app[POOL_KEY]
    assert pool is not None and len(pool.workers) == 2
    peers = [await _start(hoinghi_workers, "hub", "hub")]
    peers += [await _start(hoinghi_workers, f"s{i}") for i in range(2)]
    try:
        router = hoinghi_workers.signaling.rooms["demo"].router
        placed = {router.transports[_pid(p)].worker for p in peers}
        assert placed == {0, 1}, "sites are spread over both workers"
        pairs = [(a, b) for a in peers for b in peers if a is not b]
        ok = await _wait(lambda: all(_frames(a, b) > 0 for a, b in pairs), 15)
        assert ok, [(router.transports[_pid(a)].worker, router.transports[_pid(b)].worker, _frames(a, b), [(s["index"], s["site_id"]) for s in a.slots["video"]]) for a, b in pairs]
        before = {(id(a), id(b)): _frames(a, b) for a, b in pairs}
        sent0 = {id(p): p.video_track.frames for p in peers}
        await asyncio.sleep(4.0)
        for a, b in pairs:
            got = _frames(a, b) - before[(id(a), id(b))]
            sent = b.video_track.frames - sent0[id(b)]
            # across workers too, every frame arrives (+-2 at the window edges)
            assert abs(got - sent) <= 2, (a.name, b.name, got, sent)
            audio = a.track_for(_pid(b), "audio")
            assert audio is not None and audio.frames > 100
        await asyncio.sleep(1.2)  # a stats round from each worker
        stats = pool.worker_stats()
        assert all(w["pipe_in"] > 0 and w["pipe_out"] > 0 for w in stats), stats  # media crossed both ways
        assert all(w["cpu_seconds"] > 0 for w in stats)
        # each worker times its fan-out from the kernel's stamp (piped packets carry the
        # origin's), and times its garbage collector
        assert all(sum(w["forward_delay"]) > 0 for w in stats), [w["forward_delay"] for w in stats]
        assert all(len(w["gc_pause"]) == len(w["forward_delay"]) for w in stats)
        tot = router.totals()
        assert tot["packets_in"] > 0 and tot["packets_out"] > 0 and tot["streams_in_video"] == 3
        # the roster's figures come from the workers too
        assert router.participant_stats(_pid(peers[1]))["packets_out"] > 0
        # the uplink budget's figures add up over the workers (each measures its own egress)
        assert hoinghi_workers.signaling.egress.snapshot()["sent_bps"] > 100_000
        async with aiohttp.ClientSession() as http:
            async with http.get(hoinghi_workers.url + "/metrics") as resp:
                text = await resp.text()
        assert 'hoinghi_worker_cpu_seconds_total{worker="1"}' in text
        assert 'hoinghi_worker_up{worker="0"} 1.0' in text
        assert "hoinghi_forward_delay_seconds_count" in text and "hoinghi_worker_gc_pause_seconds_count" in text
        line = next(x for x in text.splitlines() if x.startswith('hoinghi_packets_total{direction="out",meeting="demo"}'))
        assert float(line.split()[-1]) > 1000
    finally:
        await _close(*peers)


async def test_killed_worker_is_restarted_and_its_sites_reconnect(hoinghi_workers):
    pool = hoinghi_workers.server.app[POOL_KEY]
    hub = await _start(hoinghi_workers, "hub", "hub")
    a = await _start(hoinghi_workers, "a")
    b = await _start(hoinghi_workers, "b")
    peers = [hub, a, b]
    who = {id(hub): ("hub", "hub"), id(a): ("a", "site"), id(b): ("b", "site")}
    try:
        room = hoinghi_workers.signaling.rooms["demo"]
        router = room.router
        assert await _wait(lambda: all(_frames(x, y) > 0 for x in peers for y in peers if x is not y), 15)
        victim_index = router.transports[_pid(a)].worker
        on_victim = [p for p in peers if router.transports[_pid(p)].worker == victim_index]
        survivors = [p for p in peers if p not in on_victim]
        assert survivors, "the three sites are on both workers"
        victim = pool.workers[victim_index]
        old_os_pid = victim.os_pid
        os.kill(old_os_pid, signal.SIGKILL)

        # the sites on the dead worker are told to reconnect; the others never notice
        assert await _wait(lambda: all(p.ws.closed for p in on_victim), 10)
        byes = [[m.get("reason") for m in p.messages if m.get("type") == "bye"] for p in on_victim]
        assert all(b == ["media_restart"] for b in byes), byes
        assert not any(p.ws.closed for p in survivors)
        if len(survivors) > 1:
            x, y = survivors
            n0 = _frames(x, y)
            await asyncio.sleep(1.5)
            assert _frames(x, y) > n0 + 10, "media between sites on the live worker kept flowing"

        assert await _wait(lambda: victim.alive and victim.os_pid not in (0, old_os_pid), 15)
        assert victim.restarts == 1

        # the sites rejoin (as their pages do on `bye` media_restart) and media flows again
        await _close(*on_victim)
        rejoined = []
        for p in on_victim:
            rejoined.append(await _start(hoinghi_workers, *who[id(p)]))
        peers = survivors + rejoined
        assert await _wait(lambda: all(_frames(x, y) > 0 for x in peers for y in peers if x is not y), 20)
        assert len(room.sessions) == 3
        # the meeting kept its state: still the same room
        assert hoinghi_workers.signaling.rooms["demo"] is room
    finally:
        await _close(*peers)


async def test_recording_runs_in_a_worker_and_follows_a_floor_on_another(hoinghi_workers):
    """The recorder lives in one worker; the floor's streams reach it through the pipe."""
    import av

    srv = hoinghi_workers
    hub = await _start(srv, "hub", "hub")
    site = await _start(srv, "s1")
    try:
        router = srv.signaling.rooms["demo"].router
        assert router.transports[_pid(hub)].worker != router.transports[_pid(site)].worker
        assert await _wait(lambda: _frames(hub, site) > 5 and _frames(site, hub) > 5, 15)
        router.set_floor(_pid(site))
        auth = {"Authorization": f"Bearer {srv.token('hub', 'hub')}"}
        url = f"{srv.url}/api/meetings/demo/recording"
        async with aiohttp.ClientSession() as http:
            async with http.post(url, json={"action": "start"}, headers=auth) as r:
                assert r.status == 201, await r.text()
            await asyncio.sleep(4.0)
            async with http.get(f"{srv.url}/api/meetings/demo/recordings", headers=auth) as r:
                live = (await r.json())["recordings"][0]["live"]
            assert live["subject"] == _pid(site) and live["video_frames"] > 0, live
            async with http.post(url, json={"action": "stop"}, headers=auth) as r:
                assert r.status == 200, await r.text()
                rec = (await r.json())["recording"]
        assert rec["state"] == "complete" and rec["error"] is None
        assert rec["frames"] >= FPS * 2, rec  # the floor's frames arrived through the pipe
        path = srv.settings.data_dir / srv.storage._conn.execute("SELECT path FROM recordings").fetchone()[0]
        with av.open(str(path)) as container:
            frames = sum(1 for _ in container.decode(video=0))
        assert frames >= FPS * 2
    finally:
        await _close(hub, site)


async def test_bad_offer_is_refused_by_the_worker_and_nothing_else_changes(hoinghi_workers):
    pool = hoinghi_workers.server.app[POOL_KEY]
    hub = await _start(hoinghi_workers, "hub", "hub")
    site = await _start(hoinghi_workers, "s1")
    try:
        assert await _wait(lambda: _frames(site, hub) > 5, 15)
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(hoinghi_workers.url.replace("http", "ws") + "/ws") as ws:
                await ws.send_json({"type": "join", "token": hoinghi_workers.token("s2")})
                joined = await ws.receive_json(timeout=10)
                assert joined["type"] == "joined"
                bad = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\n"
                await ws.send_json({"type": "offer", "sdp": bad, "id": 7})
                while True:
                    msg = await ws.receive_json(timeout=15)
                    if msg["type"] == "error":
                        break
                assert msg["code"] == "sdp_invalid" and msg.get("ref") == 7, msg
        await asyncio.sleep(0.5)
        assert all(w["alive"] and w["restarts"] == 0 for w in pool.worker_stats())
        assert sum(w.sites for w in pool.workers) == 2  # the refused site holds no place
        n0 = _frames(site, hub)
        await asyncio.sleep(1.0)
        assert _frames(site, hub) > n0 + 5  # the others never noticed
    finally:
        await _close(hub, site)


async def test_uplink_budget_holds_across_workers(hoinghi_workers):
    """The operator's egress capacity is split over the workers by their demand; what all
    of them send together stays under it."""
    from loadtest.rawpeer import FeedbackTicker, HoinghiSite, Pacer

    srv = hoinghi_workers
    sig = srv.signaling
    http = aiohttp.ClientSession()
    peers: list = []
    pacer = Pacer(fps=30, rate=60, audio=False)
    ticker = None
    try:
        for sid in ("floor", "t1", "t2", "t3"):
            p = HoinghiSite(http, srv.url, srv.token(sid), sid, payload_size=600, publish_video=True)
            await p.join()
            await p.negotiate()
            await p.wait_connected()
            pacer.sources.append(p.video)
            peers.append(p)
        pacer.start()
        receivers = []
        for i in range(4):
            r = HoinghiSite(http, srv.url, srv.token(f"r{i}"), f"r{i}", publish_video=False, video_slots=4, audio_slots=1)
            await r.join()
            await r.negotiate()
            await r.wait_connected()
            receivers.append(r)
            peers.append(r)
        ticker = FeedbackTicker(receivers)
        ticker.start()
        await sig.chair.act("demo", "floor", site_id="floor")
        router = sig.rooms["demo"].router
        assert {router.transports[r.participant_id].worker for r in receivers} == {0, 1}

        async def egress(seconds: float) -> float:
            await asyncio.sleep(1.1)  # a fresh stats round from every worker
            b0, t0 = router.totals()["bytes_out"], time.monotonic()
            await asyncio.sleep(seconds)
            return (router.totals()["bytes_out"] - b0) * 8 / (time.monotonic() - t0)

        await asyncio.sleep(3.0)  # four streams to every receiver, rates settled
        free = await egress(2.0)
        assert free > 1_000_000, free
        cap = 0.45 * free
        sig.egress.set_capacity(cap)
        await asyncio.sleep(2.0)
        limited = await egress(3.0)
        assert limited < cap, (limited, cap, free)
        assert limited > 0.15 * free  # the floor still goes to everyone
        snap = sig.egress.snapshot()
        assert snap["capacity_bps"] == round(cap) and snap["limiting"], snap
        sig.egress.set_capacity(0)
        await asyncio.sleep(3.0)
        assert await egress(2.0) > 0.8 * free  # lifted: the thumbnails come back
    finally:
        if ticker is not None:
            await ticker.stop()
        await pacer.stop()
        await asyncio.gather(*(p.close() for p in peers), return_exceptions=True)
        await http.close()
