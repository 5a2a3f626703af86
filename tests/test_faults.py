"""Faults in a live meeting, each recovered without anyone acting.

* A site's network drops for several seconds (every datagram in and out of its ICE socket,
  STUN consent included, is lost) and comes back: the server keeps its transport (ICE
  consent freshness tolerates ~30 s), media flows again both ways on the same connection,
  and the other sites never noticed.
* A transport the server does give up on (consent expired) is not left hanging: the site is
  told `bye` `media_failed` and its socket closed, which makes a client rejoin.
* The hub leaves (its process dies: no `leave`) and comes back: the sites keep media
  flowing between themselves, the chair's decisions hold, and the returning hub is the chair
  again and back on the stage.

Real server (in-process app on loopback), real aiortc sites.
"""

from __future__ import annotations

import asyncio
import time

import aioice.ice
import pytest

from loadtest.peer import SyntheticSite
from loadtest.shaper import LinkCut
from testkit import chair, until

pytestmark = pytest.mark.slow

OUTAGE_S = 12.0  # between the 5 and 20 s of a typical radio/ADSL drop, well under consent's ~30 s


def _frames(viewer: SyntheticSite, publisher: SyntheticSite) -> int:
    track = viewer.track_for(publisher.joined["participant"]["id"])
    return track.frames if track else 0


async def _flows(viewer: SyntheticSite, publisher: SyntheticSite, n: int = 10, timeout: float = 15) -> None:
    start = _frames(viewer, publisher)
    name = f"{viewer.joined['participant']['site_id']} receiving {publisher.joined['participant']['site_id']}"
    await until(lambda: _frames(viewer, publisher) >= start + n, timeout, name)


def _slot0(site: SyntheticSite) -> str | None:
    return site.slots["video"][0]["site_id"] if site.slots["video"] else None


async def test_site_network_drop_recovers_on_the_same_connection(hoinghi_server):
    server = hoinghi_server
    hub = SyntheticSite(server.url, server.token("hub", "hub"), fps=15)
    flaky = SyntheticSite(server.url, server.token("xa-flaky"), fps=15)
    steady = SyntheticSite(server.url, server.token("xa-steady"), publish_video=False, publish_audio=False)
    peers = [hub, flaky, steady]
    try:
        for p in peers:
            await p.join()
            await p.start_media()
        await asyncio.gather(_flows(flaky, hub), _flows(hub, flaky), _flows(steady, hub))
        flaky_pid = flaky.joined["participant"]["id"]
        transport = server.signaling.rooms["demo"].router.transports[flaky_pid]

        link = LinkCut()
        link.attach(flaky.pc)
        link.cut()
        t0 = time.monotonic()
        # during the outage the rest of the meeting is unaffected
        while time.monotonic() - t0 < OUTAGE_S:
            await _flows(steady, hub, n=5, timeout=5)
            await asyncio.sleep(0.5)
        hub_from_flaky = _frames(hub, flaky)
        flaky_from_hub = _frames(flaky, hub)
        assert link.dropped_in > 0 and link.dropped_out > 0  # the link really was dead, both ways
        link.restore()

        # media resumes both ways by itself, on the same transport and signaling session
        await asyncio.gather(_flows(flaky, hub, timeout=20), _flows(hub, flaky, timeout=20))
        assert _frames(hub, flaky) > hub_from_flaky and _frames(flaky, hub) > flaky_from_hub
        assert server.signaling.rooms["demo"].router.transports.get(flaky_pid) is transport
        assert not transport.closed
        assert not any(m.get("type") == "bye" for m in flaky.messages)
        assert flaky.pc.connectionState == "connected"
    finally:
        for p in peers:
            await p.close()


async def test_transport_the_server_gives_up_on_sends_the_site_to_rejoin(hoinghi_server, monkeypatch):
    # consent freshness made fast (production: 6 failed checks 5 s apart, ~30 s)
    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", 0.4)
    monkeypatch.setattr(aioice.ice, "CONSENT_FAILURES", 3)
    server = hoinghi_server
    site = SyntheticSite(server.url, server.token("xa-gone"), fps=15)
    try:
        await site.join()
        await site.start_media()
        await until(lambda: site.pc.connectionState == "connected", 10, "connected")
        link = LinkCut()
        link.attach(site.pc)
        bye = site.wait_for("bye", 15)
        link.cut()
        msg = await bye
        assert msg["reason"] == "media_failed"
        await until(lambda: site.ws.closed, 5, "socket closed by the server")
        assert site.joined["participant"]["id"] not in server.signaling.rooms.get("demo", type("R", (), {"sessions": {}})()).sessions
    finally:
        await site.close()
    # the site's next connection (what the web client does on its own) is a normal join
    again = SyntheticSite(server.url, server.token("xa-gone"), publish_video=False, publish_audio=False)
    try:
        await again.join()
        await again.start_media()
        await until(lambda: again.pc.connectionState == "connected", 10, "connected again")
    finally:
        await again.close()


async def test_hub_leaves_and_returns_meeting_goes_on(hoinghi_server):
    server = hoinghi_server
    hub = SyntheticSite(server.url, server.token("hub", "hub"), fps=15)
    a = SyntheticSite(server.url, server.token("xa-a"), fps=15)
    b = SyntheticSite(server.url, server.token("xa-b"), fps=15)
    peers = [hub, a, b]
    try:
        for p in peers:
            await p.join()
            await p.start_media()
        await asyncio.gather(_flows(a, hub), _flows(b, hub), _flows(a, b), _flows(b, a))
        assert _slot0(b) == "hub"  # no floor: the hub is everyone's stage
        await chair(hub, "floor", site_id="xa-a")
        await until(lambda: _slot0(b) == "xa-a", 5, "floor on b's stage")
        await chair(hub, "mute", site_id="xa-b", kind="audio")

        # the hub's machine dies: no leave message, its sockets just go away
        for task in hub._consumers:
            task.cancel()
        await hub.pc.close()
        await hub.ws.close()
        await hub.http.close()
        await until(lambda: not any(s.participant.site_id == "hub" for s in server.signaling.rooms["demo"].sessions.values()), 10, "hub gone")
        # the sites carry on between themselves
        await asyncio.gather(_flows(a, b), _flows(b, a))
        assert _slot0(b) == "xa-a"

        back = SyntheticSite(server.url, server.token("hub", "hub"), fps=15)
        peers.append(back)
        joined = await back.join()
        assert joined["participant"]["role"] == "hub"
        assert joined["floor"]["site_id"] == "xa-a"  # the chair's decisions held while it was away
        await back.start_media()
        await asyncio.gather(_flows(back, a), _flows(back, b), _flows(a, back), _flows(b, back))
        assert server.signaling.controls["demo"].is_muted("xa-b", "audio")
        # it chairs again: takes the floor back and is on every stage
        await chair(back, "floor")
        await until(lambda: _slot0(a) == "hub" and _slot0(b) == "hub", 5, "hub back on the stage")
        done = await chair(back, "unmute", site_id="xa-b", kind="audio")
        assert done["action"] == "unmute"
    finally:
        for p in peers:
            await p.close()
