"""The site page while its offer waits in the join queue: it says so, with its place, and
gets in by itself. A real `hoinghi serve` paced to one media set-up at a time and one
start per second (HOINGHI_JOIN_CONCURRENCY / HOINGHI_JOINS_PER_SECOND), three site pages
opened at once: the later ones wait, read "Đang chờ vào phòng: thứ N", and all connect."""

from __future__ import annotations

import asyncio
import sys
import time

import pytest

from conftest import HoinghiServer, _free_port
from test_meeting import wait_state

pytestmark = pytest.mark.slow


async def test_site_page_shows_its_place_in_line_and_gets_in(tmp_path, open_page, monkeypatch):
    monkeypatch.setenv("HOINGHI_JOIN_CONCURRENCY", "1")
    monkeypatch.setenv("HOINGHI_JOINS_PER_SECOND", "1")
    server = HoinghiServer(_free_port(), tmp_path / "data", tmp_path / "server.log")
    server.start()
    try:
        urls = [server.join_url("site", server.token(f"xa-{i}", name=f"Xã {i}")) for i in range(3)]
        pages = await asyncio.gather(*(open_page(f"site{i}", u) for i, u in enumerate(urls)))
        seen: list[set[str]] = [set() for _ in pages]
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            states = []
            for page, texts in zip(pages, seen):
                texts.add(await page.locator("#status-text").inner_text())
                states.append(await page.evaluate("() => window.hoinghi && window.hoinghi.state"))
            if all(s == "connected" for s in states):
                break
            await asyncio.sleep(0.1)
        for page in pages:
            await wait_state(page, "connected", 5)
        waited = [sorted(t for t in texts if t.startswith("Đang chờ vào phòng: thứ")) for texts in seen]
        # at one set-up per second, at least two of the three pages waited in line
        assert sum(1 for w in waited if w) >= 2, seen
        assert any("thứ 1." in t for w in waited for t in w), waited
    except BaseException:
        sys.stderr.write(f"\n----- server log -----\n{server.log()[-8000:]}\n")
        raise
    finally:
        server.stop()
