"""Simulcast from a real browser and per-receiver congestion control.

A Chromium site publishes three layers from its 1280x720 fake camera; a synthetic aiortc
site (a real ICE/DTLS/SRTP receiver that decodes, and answers with transport-cc feedback as
a browser does) watches through a downlink capped like `tc tbf` at 400 kbit/s. It must get
the lowest layer and keep playing with little loss; once the cap is lifted it must climb
back to the top layer.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from loadtest.peer import SyntheticSite
from loadtest.shaper import LinkImpairment


pytestmark = pytest.mark.browser

OUTBOUND_LAYERS = """async () => {
  const pc = window.hoinghi && window.hoinghi.pc;
  if (!pc) return [];
  const stats = await pc.getStats();
  const out = [];
  stats.forEach(s => { if (s.type === "outbound-rtp" && s.kind === "video")
    out.push({rid: s.rid, w: s.frameWidth || 0, h: s.frameHeight || 0, bytes: s.bytesSent}); });
  return out;
}"""


async def _until(predicate, timeout: float, step: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(step)
    return None


async def _eq(awaitable, value) -> bool:
    return (await awaitable) == value


async def test_chromium_simulcast_to_a_capped_receiver_and_back(hoinghi, open_page):
    page = await open_page("publisher", hoinghi.join_url("site", hoinghi.token("xa-cam", "site", name="Xã Camera")))

    async def three_layers():
        layers = await page.evaluate(OUTBOUND_LAYERS)
        sizes = {(l["rid"], l["w"]) for l in layers if l["w"]}
        return layers if {("q", 320), ("h", 640), ("f", 1280)} <= sizes else None

    # an uncapped viewer makes the server want every layer: the browser sends all three
    first = SyntheticSite(hoinghi.url, hoinghi.token("xa-fibre", "site"), publish_video=False, publish_audio=False)
    await first.join()
    await first.start_media()
    layers = await _until(three_layers, 40)
    assert layers, await page.evaluate(OUTBOUND_LAYERS)
    await first.close()

    # nobody receives h or f any more: the server pauses them at the publisher
    paused = await _until(
        lambda: page.evaluate("() => JSON.stringify(window.hoinghi.conference.publishLayers || [])"), 1
    )
    assert await _until(
        lambda: _eq(page.evaluate("() => JSON.stringify(window.hoinghi.conference.publishLayers || [])"), '["q"]'), 15
    ), paused
    sent = {l["rid"]: l["bytes"] for l in await page.evaluate(OUTBOUND_LAYERS)}
    await asyncio.sleep(1.5)
    later = {l["rid"]: l["bytes"] for l in await page.evaluate(OUTBOUND_LAYERS)}
    assert later["q"] > sent["q"] and later["f"] - sent["f"] < 2000, (sent, later)

    link = LinkImpairment(downstream_bps=400_000)
    viewer = SyntheticSite(hoinghi.url, hoinghi.token("xa-yeu", "site"), publish_video=False, publish_audio=False, impairment=link)
    await viewer.join()
    await viewer.start_media()
    try:
        pub_id = next(p["id"] for p in viewer.participants.values() if p["site_id"] == "xa-cam")

        def track():
            return viewer.track_for(pub_id)

        # capped: the lowest layer (320x180) and no more
        assert await _until(lambda: track() and track().size == (320, 180) and track().frames > 20, 25), (
            track() and (track().size, track().frames)
        )
        mid = viewer.slot_of(pub_id)["mid"]
        expected0, received0 = viewer.media_loss(mid)
        frames0 = track().frames
        sizes_seen: set = set()
        for _ in range(24):
            await asyncio.sleep(0.25)
            sizes_seen.add(track().size)
        expected1, received1 = viewer.media_loss(mid)
        assert sizes_seen == {(320, 180)}
        assert track().frames - frames0 >= 6 * 10, track().frames - frames0  # keeps playing (20 fps camera)
        expected, received = expected1 - expected0, received1 - received0
        # media the viewer's decoder never got, after retransmission, over 6 s at the cap
        assert expected > 50 and (expected - received) / expected <= 0.02, (expected, received)

        # cap lifted: back to the top layer (the publisher is asked for f again on the way)
        lifted = time.monotonic()
        link.downstream_bps = None
        assert await _until(lambda: track().size == (1280, 720), 20), track().size
        climb = time.monotonic() - lifted
        print(f"climbed back to 1280x720 in {climb:.1f} s")
    finally:
        await viewer.close()
