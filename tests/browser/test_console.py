"""The hub console and the site page driven through headless Chromium: join (after the
pre-join check), request to speak, give the floor (that site becomes the large video on
another page), mute a site, roll call and its CSV; screenshots of both pages in both
languages and of the link check page go to docs/screenshots/.

Two Chromium pages at once (hub and one site) plus one synthetic aiortc site that publishes
a small video, so the floor can move to a site the browser page does not publish itself.
"""

from __future__ import annotations

import csv
import io
import json
import urllib.request
from pathlib import Path

import pytest

from loadtest.peer import SyntheticSite

pytestmark = pytest.mark.browser

SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"

SITE_A = "nho-quan.cuc-phuong"  # the browser site page
SITE_B = "kim-son.phat-diem"  # a synthetic site with video


def _post(url: str, token: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(url, method="POST", data=json.dumps(body or {}).encode(),
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


async def _state(page, state: str, timeout_s: float = 25) -> None:
    try:
        await page.wait_for_function("(s) => window.hoinghi && window.hoinghi.state === s", arg=state, timeout=timeout_s * 1000)
    except Exception as exc:
        info = await page.evaluate("() => window.hoinghi && ({state: hoinghi.state, lastError: hoinghi.lastError})")
        raise AssertionError(f"{page.url}: not {state!r}: {info}") from exc


async def _big_site(page) -> str | None:
    return await page.evaluate("() => document.querySelector('#floor .tile')?.dataset.siteId || null")


async def _shoot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.evaluate("() => document.querySelector('.roster-scroll')?.scrollTo(0, 0)")
    await page.screenshot(path=str(SCREENSHOTS / name))


async def test_console_flows_through_the_browser(hoinghi, open_page):
    hub_token = hoinghi.token("hub", "hub", name="Trung tâm tỉnh Ninh Bình")
    counts = _post(f"{hoinghi.url}/api/sites/import?sample=1&replace=1", hub_token)
    assert counts["total"] == 164
    _post(f"{hoinghi.url}/api/meetings/demo/start", hub_token)

    # B sends video only: it never becomes the dominant speaker, so the stage moves to it
    # only when it is given the floor
    b = SyntheticSite(hoinghi.url, hoinghi.token(SITE_B, name="UBND thị trấn Phát Diệm"), fps=10, decode=False, publish_audio=False)
    extra = [SyntheticSite(hoinghi.url, hoinghi.token(s, name=n), publish_video=False, decode=False)
             for s, n in (("gia-vien.gia-hung", "UBND xã Gia Hưng"), ("tp-ninh-binh.van-giang", "UBND phường Vân Giang"))]
    try:
        for s in [b, *extra]:
            await s.join()
            await s.start_media()

        hub = await open_page("hub", hoinghi.join_url("hub", hub_token))
        site = await open_page("site", hoinghi.join_url("site", hoinghi.token(SITE_A, name="UBND xã Cúc Phương")))

        # --- join: the site checks its camera, microphone and link first, then joins by itself
        await site.wait_for_function("() => window.hoinghi && window.hoinghi.check && window.hoinghi.check.level", timeout=20000)
        check = await site.evaluate("() => window.hoinghi.check")
        assert check["camera"] and check["mic"] and check["level"] in ("hd", "sd"), check
        assert check["rttMs"] is not None and check["downBps"] > 0 and check["upBps"] > 0
        await _state(site, "connected")
        await _state(hub, "connected")
        row_a = hub.locator(f'#roster-body tr[data-site-id="{SITE_A}"]')
        await row_a.wait_for(timeout=10000)
        assert await row_a.get_attribute("data-state") == "joined"
        # absent sites are listed too, grouped by district
        assert await hub.locator('#roster-body tr.group-row[data-group="nho-quan"]').count() == 1
        assert "4 điểm cầu" in await hub.locator("#roster-count").inner_text()
        assert "163" in await hub.locator("#roster-count-all").inner_text()

        # --- request to speak: the hub sees it at once, in the queue and on the row
        await site.click("#btn-hand")
        await hub.wait_for_selector(f'#hands li[data-site-id="{SITE_A}"]', timeout=3000)
        await hub.wait_for_selector(f'#roster-body tr.has-hand[data-site-id="{SITE_A}"]', timeout=3000)
        assert "Hủy xin phát biểu" in await site.locator("#btn-hand").inner_text()

        # --- give the floor to B: on the site page, B becomes the large video
        # without a floor the stage shows the last dominant speaker, else the hub: B never speaks
        await site.wait_for_function("() => document.querySelector('#floor .tile')?.dataset.siteId === 'hub'", timeout=10000)
        await hub.click(f'#roster-body tr[data-site-id="{SITE_B}"] .col-actions button.btn-floor')
        await site.wait_for_function(f"() => document.querySelector('#floor .tile')?.dataset.siteId === '{SITE_B}'", timeout=2000)
        await site.wait_for_function(
            "() => { const v = document.querySelector('#floor .tile video'); return v && v.videoWidth > 0 && !v.paused; }", timeout=15000)
        assert "Đang phát biểu" in await site.locator("#floor .tile .tile-role").inner_text()
        await hub.wait_for_selector("#floor-line:not([hidden])", timeout=2000)
        # the connection indicator names what the server sends for the large video, and why
        await site.wait_for_function(
            "() => (document.querySelector('#link-panel dd[data-fact=big]')?.textContent || '').includes('Phát Diệm')", timeout=10000)
        assert await site.locator('#link-panel dd[data-fact="why"]').count() == 1
        await site.wait_for_selector('#link-panel dd[data-fact="receive"]', timeout=10000)

        await _shoot(site, "site-vi.png")
        await _shoot(hub, "hub-vi.png")
        for page in (site, hub):
            await page.click('button[data-lang="en"]')
        assert "Cancel request to speak" in await site.locator("#btn-hand").inner_text()
        assert "Has the floor" in await hub.locator("#floor-line").inner_text()
        await _shoot(site, "site-en.png")
        await _shoot(hub, "hub-en.png")
        for page in (site, hub):
            await page.click('button[data-lang="vi"]')

        # --- the server's uplink in the console head (no limit set here: what it sends)
        await hub.wait_for_selector("#egress:not([hidden])", timeout=5000)
        assert "Băng thông đi:" in await hub.locator("#egress").inner_text()

        # --- keep A in every site's thumbnails: the row says so, the head lists it, clear all
        row_more = hub.locator(f'#roster-body tr[data-site-id="{SITE_A}"] details.more')
        await row_more.locator("summary").click()
        await row_more.locator("button.btn-keep").click()
        await hub.wait_for_function(
            "() => (document.querySelector('#floor-line')?.textContent || '').includes('Luôn hiện cho mọi điểm cầu: UBND xã Cúc Phương')", timeout=3000)
        await hub.wait_for_selector(f'#roster-body tr[data-site-id="{SITE_A}"] .tag-kept', timeout=3000)
        await hub.click("#floor-line .floor-pins button")
        await hub.wait_for_selector(f'#roster-body tr[data-site-id="{SITE_A}"] .tag-kept', state="detached", timeout=3000)

        # --- give the floor to A from the queue: on the hub page A becomes the large video
        await hub.click(f'#hands li[data-site-id="{SITE_A}"] button.btn-primary')
        await hub.wait_for_function(f"() => document.querySelector('#floor .tile')?.dataset.siteId === '{SITE_A}'", timeout=2000)
        await site.wait_for_selector("#self-badge:not([hidden])", timeout=2000)
        assert "Xin phát biểu" not in await hub.locator("#hands").inner_text() or await hub.locator("#hands").is_hidden()
        assert await site.evaluate("() => window.hoinghi.self.hand") is None

        # --- mute A: the site page says so and its microphone track is off; the server drops its audio
        await hub.click(f'#roster-body tr[data-site-id="{SITE_A}"] .col-actions button.btn-mute')
        await site.wait_for_function("() => document.querySelector('#btn-mic').classList.contains('is-chair')", timeout=2000)
        assert "Micro bị trung tâm tắt" in await site.locator("#btn-mic").inner_text()
        assert await site.locator("#btn-mic").is_disabled()
        assert await site.evaluate("() => window.hoinghi.localStream.getAudioTracks()[0].enabled") is False
        assert "đã tắt micro của điểm cầu này" in await site.locator("#notices").inner_text()
        await hub.wait_for_selector(f'#roster-body tr[data-site-id="{SITE_A}"] td.col-mic.flag-chair', timeout=2000)

        # --- roll call: A answers in the page, B over its socket; the result comes out as CSV
        await hub.click("#btn-rollcall")
        await site.wait_for_selector("#rollcall:not([hidden]) #btn-present", timeout=2000)
        await site.click("#btn-present")
        await site.wait_for_selector('#rollcall[data-answered="true"]', timeout=2000)
        rc_id = await site.evaluate("() => window.hoinghi.rollCall.id")
        await b.send({"type": "roll_call_answer", "roll_call_id": rc_id})
        await hub.wait_for_function("() => document.querySelector('#rollcall-box')?.textContent.includes('2 có mặt')", timeout=3000)
        await hub.click("#btn-rollcall")  # end it
        await hub.wait_for_selector('#rollcall-box[data-active="false"]', timeout=2000)
        await site.wait_for_selector("#rollcall", state="hidden", timeout=2000)
        async with hub.expect_download() as dl_info:
            await hub.click("#rollcall-box button.btn-primary")
        download = await dl_info.value
        assert download.suggested_filename == "diem-danh-demo.csv"
        text = Path(await download.path()).read_text(encoding="utf-8-sig")
        rows = {r[0]: r for r in list(csv.reader(io.StringIO(text)))[1:]}
        assert rows[SITE_A][1] == "UBND xã Cúc Phương" and rows[SITE_A][6].startswith("Có mặt")
        assert rows[SITE_B][6].startswith("Có mặt")
        assert rows["gia-vien.gia-hung"][6] == "Không trả lời"
        assert rows["yen-mo.yen-lam"][6] == "Vắng" and len(rows) == 163

        # --- the link check on its own, before a big conference
        await site.context.close()
        check_page = await open_page("check", f"{hoinghi.url}/check#t={hoinghi.token(SITE_A, name='UBND xã Cúc Phương')}")
        await check_page.wait_for_function("() => window.hoinghi && window.hoinghi.phase === 'done'", timeout=20000)
        verdict = await check_page.locator(".check-verdict").inner_text()
        assert "Đường truyền của bạn" in verdict
        assert await check_page.locator("#btn-join").is_visible()
        await _shoot(check_page, "check-vi.png")
    finally:
        for s in [b, *extra]:
            await s.close()
