"""A join storm: 164 sites open their links at the same moment; every one gets in.

Real server, real tokens, real WebSockets. 24 sites are real raw peers (aiortc ICE + DTLS
on the client side, the server's full media set-up on the other) and must connect their
media; the other 140 send a real SDP offer (one made once by a raw peer) over their own
WebSocket and get their own answer, but do not run ICE themselves (a 2-core test machine
cannot run 164 client-side handshakes next to the server's). Half of the signaling-only
sites come from other loopback source addresses, half from the same one as the real
peers: no per-address limit may refuse any of them. Offers beyond the pace wait in the
join queue and are told their place (`queued`), which only ever moves forward.
"""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from loadtest.rawpeer import HoinghiSite, RawPeer

pytestmark = pytest.mark.slow

SITES = 164
REAL = 24


async def _signaling_only(http: aiohttp.ClientSession, url: str, token: str, offer: str, log: list) -> aiohttp.ClientWebSocketResponse:
    ws = await http.ws_connect(url.replace("http://", "ws://") + "/ws")
    await ws.send_str(json.dumps({"type": "join", "token": token}))
    sent_offer = False
    async for msg in ws:
        data = json.loads(msg.data)
        log.append(data)
        if data["type"] == "joined" and not sent_offer:
            sent_offer = True
            await ws.send_str(json.dumps({"type": "offer", "id": "o1", "sdp": offer}))
        elif data["type"] in ("answer", "error", "bye"):
            break
    return ws


async def test_164_sites_joining_at_once_all_get_in(hoinghi_server):
    server = hoinghi_server
    sig = server.signaling
    # The signaling-only sites never connect media, so each would keep its turn for the full
    # hold time; shorten it so the test measures pacing, not 140 abandoned handshakes.
    sig.join_queue.hold_s = 0.5
    template = RawPeer("template", publish_video=False, video_slots=9, audio_slots=3)
    offer = await template.create_offer()
    await template.close()

    same_ip = aiohttp.ClientSession()
    others = [aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(f"127.0.0.{2 + i}", 0))) for i in range(7)]
    real = [HoinghiSite(same_ip, server.url, server.token(f"real-{i:02d}"), f"real-{i:02d}", publish_video=False, video_slots=9, audio_slots=3)
            for i in range(REAL)]
    logs: list[list] = [[] for _ in range(SITES - REAL)]
    sockets: list = []

    async def real_site(site: HoinghiSite) -> None:
        await site.join()
        await site.negotiate(timeout=60)
        await site.wait_connected(60)

    t0 = time.monotonic()
    try:
        tasks = [real_site(s) for s in real]
        for i in range(SITES - REAL):
            http = same_ip if i % 2 == 0 else others[i % len(others)]
            tasks.append(_signaling_only(http, server.url, server.token(f"site-{i:03d}"), offer, logs[i]))
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 120)
        elapsed = time.monotonic() - t0
        failures = [r for r in results if isinstance(r, BaseException)]
        assert not failures, failures[:3]
        sockets = [r for r in results if r is not None]

        # nobody was refused: every signaling-only site got joined and its own answer
        errors = [m for log in logs for m in log if m["type"] in ("error", "bye")]
        assert not errors, errors[:3]
        assert all(any(m["type"] == "joined" for m in log) and log[-1]["type"] == "answer" for log in logs)
        room = sig.rooms["demo"]
        assert len(room.sessions) == SITES
        assert len(room.router.transports) == SITES
        assert all(s.transport.connected.is_set() for s in real)  # media up on the client side
        assert all(room.router.transports[s.participant_id].connected.is_set() for s in real)  # and the server's
        assert not any(s.errors for s in real)

        # the storm was paced: most offers waited and were told where they stood
        places = [[m["position"] for m in log if m["type"] == "queued"] for log in logs]
        queued = [p for p in places if p]
        assert len(queued) >= (SITES - REAL) // 2, len(queued)
        assert all(p[i] >= p[i + 1] for p in queued for i in range(len(p) - 1)), "a place moved backwards"
        assert all(m["ref"] == "o1" for log in logs for m in log if m["type"] == "queued")
        assert max(p[0] for p in queued) > 20
        q = sig.join_queue.snapshot()
        assert q["started"] == SITES and q["waiting"] == 0 and q["max_waiting"] > 20, q
        print(f"\n{SITES} sites in after {elapsed:.1f} s; queue {q}")
    finally:
        for ws in sockets:
            await ws.close()
        await asyncio.gather(*(s.close() for s in real), return_exceptions=True)
        await same_ip.close()
        for h in others:
            await h.close()
