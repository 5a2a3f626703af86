"""A site page through a server restart (SIGTERM, same port and database): it says the server
is restarting, rejoins the locked meeting by itself (it had been in) and receives media again.

The hub is a synthetic aiortc site (one Chromium page is enough to prove the web client).
"""

from __future__ import annotations

import time

import pytest

from loadtest.peer import SyntheticSite

from test_meeting import wait_receiving, wait_state

pytestmark = pytest.mark.browser


async def _lock(hub: SyntheticSite) -> None:
    done = hub.wait_for("chair_done", 5)
    await hub.send({"type": "chair", "action": "lock", "id": "lock"})
    assert (await done)["action"] == "lock"


async def test_site_page_comes_back_into_locked_meeting_after_restart(hoinghi, open_page):
    hub = SyntheticSite(hoinghi.url, hoinghi.token("hub", "hub", name="Trung tâm tỉnh"), fps=15)
    try:
        await hub.join()
        await hub.start_media()
        site = await open_page("site", hoinghi.join_url("site", hoinghi.token("xa-an-binh", "site", name="UBND xã An Bình")))
        await wait_state(site, "connected")
        await wait_receiving(site, "hub")
        await _lock(hub)
        first_id = await site.evaluate("() => window.hoinghi.self.id")

        proc = hoinghi.proc
        t0 = time.monotonic()
        hoinghi.stop()  # SIGTERM
        assert proc.returncode == 0 and time.monotonic() - t0 < 5
        await wait_state(site, "reconnecting", 10)
        assert await site.evaluate("() => window.hoinghi.conference.reconnectReason") == "server_restart"
        assert "khởi động lại" in await site.locator("#stage-status").inner_text()
        await hub.close()

        hoinghi.start()
        hub = SyntheticSite(hoinghi.url, hoinghi.token("hub", "hub", name="Trung tâm tỉnh"), fps=15)
        await hub.join()
        await hub.start_media()
        await wait_state(site, "connected", 45)
        assert await site.evaluate("() => window.hoinghi.self.id") != first_id
        assert await site.evaluate("() => window.hoinghi.control.locked") is True
        await wait_receiving(site, "hub")
        assert "Đã kết nối" in await site.locator("#status").inner_text()
    finally:
        await hub.close()
