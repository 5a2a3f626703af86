"""End to end through a real browser: the hub console and a site page join the demo meeting
and see and hear each other through the server; bad links show plain-words errors.

At most two pages are open at once (the CI machine has two cores and each page encodes
720p video).
"""

from __future__ import annotations

import asyncio
import time

import pytest

pytestmark = pytest.mark.browser

MEDIA_TIMEOUT_S = 25

# Stats of what this page receives from one other site, read the way a tester would:
# the slot the server assigned to that site, the receiver whose mid the slot names, that
# receiver's inbound-rtp stats and the <video> element showing it.
RECEIVE_STATS_JS = """
async (siteId) => {
  const h = window.hoinghi;
  const out = { state: h.state };
  if (!h.pc) return out;
  const transceivers = h.pc.getTransceivers();
  const find = (kind) => {
    const slot = h.slots[kind].find((s) => s.site_id === siteId && s.participant_id);
    if (!slot) return [null, null];
    const tr = transceivers.find((t) => t.mid !== null && t.mid === slot.mid)
      || h.conference.transceiverForSlot(kind, slot);
    return [slot, tr];
  };
  const [vslot, vtr] = find("video");
  if (vtr) {
    out.videoSlot = vslot.index;
    const el = document.querySelector(`video[data-mid="${vtr.mid}"]`);
    out.videoWidth = el ? el.videoWidth : 0;
    out.videoPlaying = el ? !el.paused && el.readyState >= 2 : false;
    out.videoShown = el ? el.checkVisibility() : false;
    out.onFloor = el ? !!el.closest("#floor") : false;
    (await vtr.receiver.getStats()).forEach((r) => {
      if (r.type === "inbound-rtp" && r.kind === "video") out.framesDecoded = r.framesDecoded || 0;
    });
  }
  const [aslot, atr] = find("audio");
  if (atr) {
    out.audioSlot = aslot.index;
    const el = document.querySelector(`audio[data-mid="${atr.mid}"]`);
    out.audioPlaying = el ? !el.paused : false;
    (await atr.receiver.getStats()).forEach((r) => {
      if (r.type === "inbound-rtp" && r.kind === "audio") {
        out.packetsReceived = r.packetsReceived || 0;
        out.totalSamplesReceived = r.totalSamplesReceived || 0;
      }
    });
  }
  return out;
}
"""


async def wait_state(page, state: str, timeout_s: float = 20) -> None:
    try:
        await page.wait_for_function(
            "(s) => window.hoinghi && window.hoinghi.state === s", arg=state, timeout=timeout_s * 1000
        )
    except Exception as exc:
        info = await page.evaluate("() => window.hoinghi && ({state: window.hoinghi.state, lastError: window.hoinghi.lastError})")
        raise AssertionError(f"page {page.url} did not reach state {state!r}: {info}") from exc


async def wait_receiving(page, site_id: str, timeout_s: float = MEDIA_TIMEOUT_S) -> dict:
    """Until video frames and audio packets from `site_id` keep arriving and playing."""
    deadline = time.monotonic() + timeout_s
    last: dict = {}
    prev: dict | None = None
    while time.monotonic() < deadline:
        cur = await page.evaluate(RECEIVE_STATS_JS, site_id)
        last = cur
        if (
            prev is not None
            and cur.get("videoWidth", 0) > 0
            and cur.get("videoPlaying")
            and cur.get("videoShown")
            and cur.get("framesDecoded", 0) > prev.get("framesDecoded", 0) > 0
            and cur.get("packetsReceived", 0) > prev.get("packetsReceived", 0) > 0
            and cur.get("totalSamplesReceived", 0) > 0
            and cur.get("audioPlaying")
        ):
            return cur
        prev = cur
        await asyncio.sleep(1.0)
    raise AssertionError(f"{page.url}: media from {site_id!r} did not flow within {timeout_s} s; last stats: {last}")


async def test_hub_and_site_see_and_hear_each_other(hoinghi, open_page):
    hub_token = hoinghi.token("hub", "hub", name="Trung tâm tỉnh")
    site_token = hoinghi.token("xa-an-binh", "site", name="UBND xã An Bình")

    hub = await open_page("hub", hoinghi.join_url("hub", hub_token))
    site = await open_page("site", hoinghi.join_url("site", site_token))

    # The token leaves the address bar as soon as the page has read it.
    assert "#t=" not in hub.url and "#t=" not in site.url

    await wait_state(hub, "connected")
    await wait_state(site, "connected")

    hub_rx, site_rx = await asyncio.gather(wait_receiving(hub, "xa-an-binh"), wait_receiving(site, "hub"))
    # With one other participant, that participant is on the large "floor" view.
    assert hub_rx["onFloor"] and site_rx["onFloor"], (hub_rx, site_rx)

    # The hub's roster lists the site with its name, and counts one site.
    row = hub.locator('#roster-body tr[data-site-id="xa-an-binh"]')
    await row.wait_for(timeout=5000)
    assert "UBND xã An Bình" in await row.inner_text()
    assert "1 điểm cầu" in await hub.locator("#roster-count").inner_text()
    # The floor on the site page is labelled with the hub's name.
    assert "Trung tâm tỉnh" in await site.locator("#floor .tile figcaption").inner_text()
    assert "Đã kết nối" in await site.locator("#status").inner_text()

    # (docs/screenshots/ are taken by test_console.py, with a fuller meeting on screen)

    # Muting the site's microphone shows up in the hub's roster (media_state -> participant_updated).
    await site.click("#btn-mic")
    assert await site.evaluate("() => window.hoinghi.localStream.getAudioTracks()[0].enabled") is False
    await hub.wait_for_selector('#roster-body tr[data-site-id="xa-an-binh"] td.col-mic.flag-off', timeout=5000)
    assert "Bật micro" in await site.locator("#btn-mic").inner_text()

    # Leaving removes the site from the hub's roster.
    await site.click("#btn-leave")
    await wait_state(site, "left", 5)
    await hub.wait_for_selector('#roster-body tr[data-site-id="xa-an-binh"]', state="detached", timeout=10000)
    assert "0 điểm cầu" in await hub.locator("#roster-count").inner_text()


async def test_bad_links_show_plain_words_errors(hoinghi, open_page):
    # A garbled link: the server refuses it and the page says what to do, in Vietnamese.
    page = await open_page("site", hoinghi.join_url("site", "this-is-not-a-valid-token"))
    await wait_state(page, "error")
    assert (await page.evaluate("() => window.hoinghi.lastError.code")) == "auth_invalid"
    overlay = page.locator("#overlay")
    await overlay.wait_for(state="visible")
    assert "Đường link không đúng" in await overlay.inner_text()
    assert "Không vào được phòng họp" in await page.locator("#status").inner_text()

    # Switching to English translates the explanation on the spot, and is remembered.
    await page.click('button[data-lang="en"]')
    assert "This link is not valid" in await overlay.inner_text()
    assert (await page.evaluate("() => localStorage.getItem('hoinghi.lang')")) == "en"
    await page.click('button[data-lang="vi"]')
    await page.context.close()

    # An expired link on the hub console.
    page = await open_page("hub", hoinghi.join_url("hub", hoinghi.expired_token("hub", "hub")))
    await wait_state(page, "error")
    assert (await page.evaluate("() => window.hoinghi.lastError.code")) == "auth_expired"
    text = await page.locator("#overlay").inner_text()
    assert "Đường link đã hết hạn. Hãy xin đường link mới từ trung tâm tỉnh." in text
    # No retry loop for a dead link: still the same error a few seconds later.
    await asyncio.sleep(2)
    assert (await page.evaluate("() => window.hoinghi.state")) == "error"

    # A link with no token at all is explained without asking the server.
    await page.goto(hoinghi.join_url("site", None))
    await wait_state(page, "error", 5)
    assert (await page.evaluate("() => window.hoinghi.lastError.code")) == "auth_missing"
    assert "thiếu mã vào phòng" in await page.locator("#overlay").inner_text()


async def test_page_reconnects_after_server_restart(hoinghi, open_page):
    hub = await open_page("hub", hoinghi.join_url("hub", hoinghi.token("hub", "hub", name="Trung tâm tỉnh")))
    await wait_state(hub, "connected")
    first_id = await hub.evaluate("() => window.hoinghi.self.id")

    hoinghi.stop()
    await wait_state(hub, "reconnecting", 10)
    assert "Mất kết nối" in await hub.locator("#status").inner_text()

    hoinghi.start()
    await wait_state(hub, "connected", 45)
    # A new connection is a new participant of the same site, with working media again.
    assert await hub.evaluate("() => window.hoinghi.self.id") != first_id
    assert await hub.evaluate("() => window.hoinghi.pc.connectionState") == "connected"
    assert "Đã kết nối" in await hub.locator("#status").inner_text()
