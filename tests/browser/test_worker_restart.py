"""A site page whose media worker dies: the server restarts the worker, the page is told
(`bye media_restart`), says so in plain words, rejoins by itself and receives media again,
while the hub (on the other worker) never leaves.

`hoinghi serve` runs media in two worker processes here (the default on two cores); the hub
joins first and lands on worker 0, the site on worker 1, which the test kills with SIGKILL.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from loadtest.peer import SyntheticSite

from test_meeting import wait_receiving, wait_state

pytestmark = pytest.mark.browser


def _workers(server_pid: int) -> dict[int, int]:
    """worker index -> OS pid, from the server's child processes' command lines."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2 :].split()[1]) != server_pid:
            continue
        args = [a.decode() for a in argv if a]
        if "media.worker" in args:
            out[int(args[-1])] = int(entry)
    return out


async def test_site_page_rejoins_after_its_media_worker_dies(hoinghi, open_page):
    hub = SyntheticSite(hoinghi.url, hoinghi.token("hub", "hub", name="Trung tâm tỉnh"), fps=15)
    try:
        await hub.join()
        await hub.start_media()
        site = await open_page("site", hoinghi.join_url("site", hoinghi.token("xa-an-binh", "site", name="UBND xã An Bình")))
        await wait_state(site, "connected")
        await wait_receiving(site, "hub")
        workers = _workers(hoinghi.proc.pid)
        assert sorted(workers) == [0, 1], workers
        first_id = await site.evaluate("() => window.hoinghi.self.id")

        os.kill(workers[1], signal.SIGKILL)  # the site's worker (the hub is on worker 0)
        await wait_state(site, "reconnecting", 10)
        assert await site.evaluate("() => window.hoinghi.conference.reconnectReason") == "media_restart"
        await wait_state(site, "connected", 30)
        assert await site.evaluate("() => window.hoinghi.self.id") != first_id
        await wait_receiving(site, "hub")
        assert "Đã kết nối" in await site.locator("#status").inner_text()

        # the worker was replaced, the hub stayed and gets the site's video again
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (_workers(hoinghi.proc.pid).get(1) not in (None, workers[1])):
            await asyncio.sleep(0.2)
        assert _workers(hoinghi.proc.pid).get(1) not in (None, workers[1])
        new_id = await site.evaluate("() => window.hoinghi.self.id")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (hub.track_for(new_id) and hub.track_for(new_id).frames > 10):
            await asyncio.sleep(0.2)
        assert hub.track_for(new_id) is not None and hub.track_for(new_id).frames > 10
        assert not hub.ws.closed
    finally:
        await hub.close()
