"""Recording a meeting from the hub console (docs/recording.md): the record button in the
live footer, the red "ĐANG GHI" indicator with its clock (still there after a reload), the
list of recordings in the log tab and its download (fetch with the Bearer header, saved
from a blob), checked by opening the saved WebM with av.

One Chromium page (the hub with the fake camera) and one synthetic site sending a small
video, so the stage shows a site in the screenshot. Nobody has the floor, so what is
recorded is the hub's own video and sound (docs/recording.md).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import av
import pytest

from loadtest.peer import SyntheticSite

pytestmark = pytest.mark.browser

SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


def _recordings(url: str, token: str) -> dict:
    req = urllib.request.Request(f"{url}/api/meetings/demo/recordings", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


async def _state(page, state: str, timeout_s: float = 20) -> None:
    try:
        await page.wait_for_function("(s) => window.hoinghi && window.hoinghi.state === s", arg=state, timeout=timeout_s * 1000)
    except Exception as exc:
        info = await page.evaluate("() => window.hoinghi && ({state: hoinghi.state, lastError: hoinghi.lastError})")
        raise AssertionError(f"{page.url}: not {state!r}: {info}") from exc


async def test_record_stop_list_download(hoinghi, open_page, tmp_path):
    hub_token = hoinghi.token("hub", "hub", name="Trung tâm tỉnh Ninh Bình")
    # the API answers without the token in a URL only
    with pytest.raises(urllib.error.HTTPError) as no_auth:
        urllib.request.urlopen(f"{hoinghi.url}/api/meetings/demo/recordings", timeout=10)
    assert no_auth.value.code == 401

    site = SyntheticSite(hoinghi.url, hoinghi.token("commune-demo", name="UBND Xã mẫu"), fps=10, decode=False, publish_audio=False)
    try:
        await site.join()
        await site.start_media()
        await _record_from_the_console(hoinghi, open_page, hub_token, tmp_path)
    finally:
        await site.close()


async def _record_from_the_console(hoinghi, open_page, hub_token: str, tmp_path: Path) -> None:
    hub = await open_page("hub", hoinghi.join_url("hub", hub_token))
    await _state(hub, "connected")
    rec_btn = hub.locator("#btn-record")
    indicator = hub.locator("#rec-indicator")
    await hub.wait_for_function("() => !document.querySelector('#btn-record').disabled", timeout=10000)
    assert "Ghi biên bản" in await rec_btn.inner_text()
    assert await indicator.is_hidden()

    # --- start: the button turns into "Dừng ghi" and the red indicator counts the time
    await rec_btn.click()
    await hub.wait_for_selector("#rec-indicator:not([hidden])", timeout=5000)
    assert "Dừng ghi" in await rec_btn.inner_text()
    assert "ĐANG GHI" in await indicator.inner_text()
    listing = _recordings(hoinghi.url, hub_token)
    assert listing["recording"] is not None and listing["recordings"][0]["stopped_at"] is None
    await hub.wait_for_function(
        "() => (document.querySelector('#rec-indicator .rec-time')?.textContent || '') >= '00:03'", timeout=6000)
    await hub.wait_for_function("() => document.querySelector('#floor .tile video')?.videoWidth > 0", timeout=10000)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await hub.screenshot(path=str(SCREENSHOTS / "hub-recording-vi.png"))

    # --- a reload keeps the state: the page asks the server and finds the recording running
    await hub.reload()
    await hub.wait_for_selector("#rec-indicator:not([hidden])", timeout=10000)
    assert "Dừng ghi" in await rec_btn.inner_text()
    await _state(hub, "connected")
    await hub.click('button[data-lang="en"]')
    assert "Stop recording" in await rec_btn.inner_text()
    assert "REC" in await indicator.inner_text()
    await hub.click('button[data-lang="vi"]')
    await hub.wait_for_function(
        "() => (document.querySelector('#rec-indicator .rec-time')?.textContent || '') >= '00:04'", timeout=8000)

    # --- stop: indicator gone, a notice gives the length and size
    await hub.wait_for_function("() => !document.querySelector('#btn-record').disabled", timeout=5000)
    await rec_btn.click()
    await hub.wait_for_selector("#rec-indicator", state="hidden", timeout=10000)
    assert "Ghi biên bản" in await rec_btn.inner_text()
    assert "Đã dừng ghi" in await hub.locator("#notices").inner_text()

    # --- the log tab lists it; "Tải về" saves the WebM
    await hub.click("#tab-log")
    row = hub.locator("#rec-body tr")
    await row.first.wait_for(timeout=5000)
    assert await row.count() == 1
    await hub.screenshot(path=str(tmp_path / "log-tab.png"))
    cells = await row.first.locator("td").all_inner_texts()
    assert cells[1] != "—" and cells[2].endswith("B"), cells
    async with hub.expect_download() as dl_info:
        await row.first.locator("button", has_text="Tải về").click()
    download = await dl_info.value
    assert download.suggested_filename.startswith("demo-") and download.suggested_filename.endswith(".webm")
    saved = tmp_path / download.suggested_filename
    await download.save_as(saved)
    assert saved.stat().st_size > 10_000, saved.stat().st_size

    with av.open(str(saved)) as container:
        assert container.format.name.startswith("matroska")
        video = container.streams.video[0]
        frames = sum(1 for _ in container.decode(video))
    assert frames > 10, frames
