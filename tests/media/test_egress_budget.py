"""The hub's uplink budget with real peers: raw publishers and receivers on loopback (real
signaling, ICE, DTLS, SRTP), the real server, the budget changed at run time.

Four publishers (one holding the floor), three receivers with four video slots each. With
no limit every receiver gets all four; with a budget that carries about two streams per
receiver, what the server sends stays under it and every receiver keeps the floor; with
room for one, only the floor is left; lifting the budget brings the thumbnails back.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from loadtest.rawpeer import FeedbackTicker, HoinghiSite, Pacer
from media.budget import AVERAGE_S, HEADROOM
from testkit import until

pytestmark = pytest.mark.slow


async def _window(transports, seconds: float) -> tuple[float, list[list[int]]]:
    """Bit/s the server sent to these receivers over a window, and packets per video slot."""
    b0 = sum(t.bytes_out for t in transports)
    p0 = [[c.packets for c in t.consumers["video"]] for t in transports]
    t0 = time.monotonic()
    await asyncio.sleep(seconds)
    rate = (sum(t.bytes_out for t in transports) - b0) * 8 / (time.monotonic() - t0)
    per_slot = [[c.packets - p for c, p in zip(t.consumers["video"], before)] for t, before in zip(transports, p0)]
    return rate, per_slot


async def test_budget_keeps_egress_under_capacity_and_the_floor_last(hoinghi_server):
    server = hoinghi_server
    sig = server.signaling
    http = aiohttp.ClientSession()
    peers: list[HoinghiSite] = []
    pacer = Pacer(fps=30, rate=60, audio=False)
    ticker = None
    try:
        pubs = []
        for sid in ("floor", "t1", "t2", "t3"):
            p = HoinghiSite(http, server.url, server.token(sid), sid, payload_size=600, publish_video=True)
            await p.join()
            await p.negotiate()
            await p.wait_connected()
            pacer.sources.append(p.video)
            pubs.append(p)
            peers.append(p)
        pacer.start()
        receivers = []
        for i in range(3):
            r = HoinghiSite(http, server.url, server.token(f"r{i}"), f"r{i}", publish_video=False, video_slots=4, audio_slots=1)
            await r.join()
            await r.negotiate()
            await r.wait_connected()
            receivers.append(r)
            peers.append(r)
        ticker = FeedbackTicker(receivers)
        ticker.start()
        await sig.chair.act("demo", "floor", site_id="floor")
        room = sig.rooms["demo"]
        router = room.router
        floor_pid = pubs[0].participant_id
        rts = [router.transports[r.participant_id] for r in receivers]

        def flowing(t, n: int) -> bool:
            return sum(1 for c in t.consumers["video"] if c.producer is not None and not c.paused) == n

        await until(lambda: all(t.consumers["video"][0].producer is not None and t.consumers["video"][0].producer.participant_id == floor_pid for t in rts), 10, "floor on every stage")
        await until(lambda: all(flowing(t, 4) for t in rts), 15, "four streams to every receiver")
        await asyncio.sleep(AVERAGE_S)  # the budget's view of each stream's rate settles
        free_rate, free_slots = await _window(rts, 2.0)
        assert all(all(n > 0 for n in slots) for slots in free_slots), free_slots
        assert not sig.egress.limiting

        # what one stream costs, as the budget counts it
        stream = router.transports[floor_pid].producers["video"].streams[0]
        one = sig.egress.stream_rate(stream, 0)

        # room for two streams per receiver (six and a half in all): the stage and the first
        # thumbnail; the budget serves by priority across receivers, so a seventh would not fit
        cap2 = 6.5 * one / (1 - HEADROOM)
        assert free_rate > cap2, (free_rate, cap2)  # the budget below must bind
        sig.egress.set_capacity(cap2)
        await until(lambda: all(flowing(t, 2) for t in rts), 5, "two streams per receiver")
        await asyncio.sleep(0.5)  # switches settle (a paused slot stops at once)
        rate, slots = await _window(rts, 3.0)
        assert rate < cap2, (rate, cap2)
        for t, per in zip(rts, slots):
            assert t.consumers["video"][0].producer.participant_id == floor_pid
            assert per[0] > 0 and per[1] > 0 and per[2] == 0 and per[3] == 0, per
            assert t.consumers["video"][2].reason == "budget"
        snap = sig.egress.snapshot()
        # (a slot counts as paused by the budget only where the receiver's own link could take it)
        assert snap["limiting"] and snap["limited_receivers"] >= 1 and snap["paused_slots"] >= 1, snap
        assert snap["capacity_bps"] == round(cap2) and snap["planned_bps"] <= cap2 * (1 - HEADROOM)
        assert snap["demand_bps"] > cap2

        # room for one stream each: only the floor is left
        cap1 = 3.5 * one / (1 - HEADROOM)
        sig.egress.set_capacity(cap1)
        await until(lambda: all(flowing(t, 1) for t in rts), 5, "the floor alone")
        await asyncio.sleep(0.5)
        rate, slots = await _window(rts, 2.0)
        assert rate < cap1, (rate, cap1)
        assert all(per[0] > 0 and sum(per[1:]) == 0 for per in slots), slots
        # the receivers really got the floor's packets (decrypted at the peer)
        got = [sum(s.received for s in r.receiver.streams.values() if s.video) for r in receivers]
        assert all(g > 0 for g in got), got

        # the chair's console is told (link_stats to chairs carries the budget)
        chair = HoinghiSite(http, server.url, server.token("hub", "hub"), "hub", publish_video=False)
        peers.append(chair)
        await chair.join()
        stats = await chair._request({"type": "ping"}, "pong", 5)  # joined and reading
        assert stats["type"] == "pong"
        fut = asyncio.get_running_loop().create_future()
        chair._waiters.append(("link_stats", fut))
        msg = await asyncio.wait_for(fut, 5)
        assert msg["egress"]["capacity_bps"] == round(cap1) and msg["egress"]["limiting"] is True

        # lifted: every thumbnail comes back
        sig.egress.set_capacity(0)
        await until(lambda: all(flowing(t, 4) for t in rts), 15, "all four streams again")
        assert not sig.egress.limiting and all(t.allocator.limits is None for t in rts)
    finally:
        await pacer.stop()
        if ticker is not None:
            await ticker.stop()
        await asyncio.gather(*(p.close() for p in peers), return_exceptions=True)
        await http.close()


async def test_floor_keeps_its_top_layer_longest(hoinghi_server):
    """A simulcast floor (pre-encoded VP8 q/h/f) and two single-layer thumbnails to two
    receivers: a budget with room for the floor's top layer everywhere pauses the thumbnails
    and leaves the floor at 720p; a smaller one brings the floor down to 360p, never to a
    pause, and what the server sends stays under the budget each time."""
    from loadtest.media_source import SyntheticMedia

    media = SyntheticMedia.load(seconds=5.0)  # cached after its first encoding
    server = hoinghi_server
    sig = server.signaling
    http = aiohttp.ClientSession()
    peers: list[HoinghiSite] = []
    # heavy thumbnails (~1.7 Mbit/s): a keyframe-driven swing in the floor's top layer must not
    # make room for one. (At ~1 Mbit/s the budget, seeing the 720p 20 % below the test's one
    # reading of it, found room for a thumbnail at one receiver in 1 of 4 runs of tests/media.)
    pacer = Pacer(fps=30, rate=180, audio=False)
    ticker = None
    try:
        floor = HoinghiSite(http, server.url, server.token("floor"), "floor", media=media, simulcast=True,
                            publish_audio=False, feedback="rr")
        peers.append(floor)
        await floor.join()
        await floor.negotiate()
        await floor.wait_connected()
        await floor.start_media()
        for sid in ("t1", "t2"):
            p = HoinghiSite(http, server.url, server.token(sid), sid, payload_size=1100, publish_video=True)
            peers.append(p)
            await p.join()
            await p.negotiate()
            await p.wait_connected()
            pacer.sources.append(p.video)
        pacer.start()
        receivers = []
        for i in range(2):
            r = HoinghiSite(http, server.url, server.token(f"r{i}"), f"r{i}", publish_video=False, video_slots=3, audio_slots=1)
            peers.append(r)
            await r.join()
            await r.negotiate()
            await r.wait_connected()
            receivers.append(r)
        ticker = FeedbackTicker(receivers)
        ticker.start()
        await sig.chair.act("demo", "floor", site_id="floor")
        router = sig.rooms["demo"].router
        rts = [router.transports[r.participant_id] for r in receivers]
        streams = router.transports[floor.participant_id].producers["video"].streams
        assert [s.rid for s in streams] == ["q", "h", "f"]

        def stage(t):
            return t.consumers["video"][0]

        def thumbs_playing(t) -> int:
            return sum(1 for c in t.consumers["video"][1:] if c.producer is not None and not c.paused)

        await until(lambda: all(stage(t).producer is not None and stage(t).producer.participant_id == floor.participant_id
                                 and not stage(t).paused for t in rts), 15, "the floor on every stage")
        await until(lambda: all(thumbs_playing(t) == 2 for t in rts), 10, "both thumbnails playing")
        # keep the floor's 720p flowing whatever the receivers take (a monitoring sink, as
        # recording uses), so its rate is measured steadily before the budget counts it
        class Monitor:
            def write(self, info, stream, now) -> None:
                pass

            def source_closed(self, stream) -> None:
                pass

        assert router.attach_sink(floor.participant_id, "video", Monitor()) is streams[2]
        streams[1].sinks.append(Monitor())  # and its 360p (the publisher pauses unused layers)
        await until(lambda: all(time.monotonic() - s.last_packet < 0.2 for s in streams[1:]), 10, "the floor's 360p and 720p flowing")
        await asyncio.sleep(AVERAGE_S)  # the budget's average of it settles

        rate_of = sig.egress.stream_rate
        thumb = rate_of(router.transports[receivers[0].participant_id].consumers["video"][1].producer.streams[0], 0)
        top = rate_of(streams[2], 2)
        mid = rate_of(streams[1], 1)
        # room for the floor's top layer at both receivers (with a quarter to spare for its
        # swings), not for one thumbnail more
        assert 0.5 * top < thumb, (top, thumb)
        cap_top = 2.5 * top / (1 - HEADROOM)
        sig.egress.set_capacity(cap_top)
        try:
            await until(lambda: all(thumbs_playing(t) == 0 for t in rts), 5, "thumbnails paused")
        except AssertionError as e:
            raise AssertionError((str(e), sig.egress.snapshot(), cap_top, top, mid, thumb, [
                (t.estimator.estimate, t.estimator.mode, t.allocator.limits and list(t.allocator.limits.values()),
                 [(c.layer, c.paused, c.reason) for c in t.consumers["video"]], t.allocator.last_probe_result)
                for t in rts])) from None
        await until(lambda: all(stage(t).layer == 2 and not stage(t).paused for t in rts), 15, "the floor at 720p")
        assert all(stage(t).layer == 2 and not stage(t).paused for t in rts), (
            [(stage(t).layer, stage(t).paused, stage(t).reason, list(t.allocator.limits.values()), t.estimator.estimate) for t in rts],
            sig.egress.snapshot(), cap_top, top, mid, thumb)
        rate, _ = await _window(rts, 2.0)
        assert rate < cap_top, (rate, cap_top)

        # room for 360p at both (and a little): the floor comes down a layer, still playing
        cap_mid = 2.5 * mid / (1 - HEADROOM)
        assert 2.5 * mid < 2 * mid + (top - mid), (mid, top)  # no room for 720p at either
        sig.egress.set_capacity(cap_mid)
        await until(lambda: all(stage(t).layer == 1 and not stage(t).paused for t in rts), 8, "the floor at 360p")
        assert all(thumbs_playing(t) == 0 for t in rts)
        await asyncio.sleep(0.5)
        rate, slots = await _window(rts, 2.0)
        assert rate < cap_mid, (rate, cap_mid)
        assert all(per[0] > 0 for per in slots), slots
    finally:
        await pacer.stop()
        if ticker is not None:
            await ticker.stop()
        await asyncio.gather(*(p.close() for p in peers), return_exceptions=True)
        await http.close()


async def test_speaker_thumbnail_outlasts_pinned_ones(hoinghi_server):
    """Two pinned thumbnails rank before the speaker in every receiver's slots, but under a
    budget the dominant speaker's thumbnail is the one kept next to the floor."""
    server = hoinghi_server
    sig = server.signaling
    http = aiohttp.ClientSession()
    peers: list[HoinghiSite] = []
    pacer = Pacer(fps=30, rate=60, audio=True)
    ticker = None
    try:
        pubs = {}
        for sid in ("floor", "t1", "t2", "talker"):
            p = HoinghiSite(http, server.url, server.token(sid), sid, payload_size=600, publish_video=True,
                            publish_audio=sid == "talker")
            peers.append(p)
            await p.join()
            await p.negotiate()
            await p.wait_connected()
            pacer.sources.append(p.video)
            if p.audio is not None:
                pacer.audio_sources.append(p.audio)
            pubs[sid] = p
        pacer.start()
        receivers = []
        for i in range(2):
            r = HoinghiSite(http, server.url, server.token(f"r{i}"), f"r{i}", publish_video=False, video_slots=4, audio_slots=1)
            peers.append(r)
            await r.join()
            await r.negotiate()
            await r.wait_connected()
            receivers.append(r)
        ticker = FeedbackTicker(receivers)
        ticker.start()
        await sig.chair.act("demo", "floor", site_id="floor")
        await sig.chair.act("demo", "pin", site_id="t1")
        await sig.chair.act("demo", "pin", site_id="t2")
        router = sig.rooms["demo"].router
        rts = [router.transports[r.participant_id] for r in receivers]
        pid = {sid: p.participant_id for sid, p in pubs.items()}

        def order(t) -> list:
            return [c.producer.participant_id if c.producer else None for c in t.consumers["video"]]

        await until(lambda: router.speakers.dominant == pid["talker"], 10, "the talker is the dominant speaker")
        want = [pid["floor"], pid["t1"], pid["t2"], pid["talker"]]
        await until(lambda: all(order(t) == want for t in rts), 5, "floor, pins, then the speaker")
        await until(lambda: all(not c.paused for t in rts for c in t.consumers["video"]), 10, "every slot playing")
        await asyncio.sleep(AVERAGE_S)

        one = sig.egress.stream_rate(router.transports[pid["t1"]].producers["video"].streams[0], 0)
        audio = sum(t.allocator.audio_bps for t in rts)
        cap = (audio + 4.5 * one) / (1 - HEADROOM)  # two streams per receiver
        sig.egress.set_capacity(cap)

        def playing(t) -> list:
            return [c.producer.participant_id for c in t.consumers["video"] if c.producer is not None and not c.paused]

        await until(lambda: all(playing(t) == [pid["floor"], pid["talker"]] for t in rts), 5, "floor + speaker kept")
        await asyncio.sleep(0.5)
        rate, slots = await _window(rts, 2.0)
        assert rate < cap, (rate, cap)
        assert all(per[0] > 0 and per[1] == 0 and per[2] == 0 and per[3] > 0 for per in slots), slots
        assert all(order(t) == want for t in rts)  # the slots did not move: only the budget acted
    finally:
        await pacer.stop()
        if ticker is not None:
            await ticker.stop()
        await asyncio.gather(*(p.close() for p in peers), return_exceptions=True)
        await http.close()
