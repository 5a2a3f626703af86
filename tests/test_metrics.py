"""`/metrics` reflects a live meeting: participants, streams, packets flowing."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from loadtest.peer import SyntheticSite

pytestmark = pytest.mark.slow


def _value(text: str, name: str, **labels) -> float:
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} {labels} not in metrics")


async def test_metrics_follow_a_live_meeting(hoinghi_server):
    async with aiohttp.ClientSession() as http:
        async with http.get(hoinghi_server.url + "/metrics") as r:
            assert r.status == 200
            text = await r.text()
        assert _value(text, "hoinghi_rooms") == 0
        assert "process_cpu_seconds_total" in text
        pub = SyntheticSite(hoinghi_server.url, hoinghi_server.token("hub", "hub"))
        sub = SyntheticSite(hoinghi_server.url, hoinghi_server.token("s1"), publish_video=False, publish_audio=False)
        try:
            for p in (pub, sub):
                await p.join()
                await p.start_media()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                async with http.get(hoinghi_server.url + "/metrics") as r:
                    text = await r.text()
                if _value(text, "hoinghi_packets_total", meeting="demo", direction="out") > 100:
                    break
                await asyncio.sleep(0.5)
            assert _value(text, "hoinghi_participants", meeting="demo") == 2
            assert _value(text, "hoinghi_streams", meeting="demo", direction="in", kind="video") == 1
            assert _value(text, "hoinghi_streams", meeting="demo", direction="out", kind="audio") == 1
            assert _value(text, "hoinghi_packets_total", meeting="demo", direction="out") > 100
            assert _value(text, "hoinghi_bytes_total", meeting="demo", direction="in") > 10_000
            assert _value(text, "hoinghi_downlink_estimate_bps_count") >= 1
            # the uplink budget: no limit set, what is sent measured all the same
            assert _value(text, "hoinghi_egress_bps", what="capacity") == 0
            assert _value(text, "hoinghi_egress_bps", what="sent") > 0
            hoinghi_server.signaling.egress.set_capacity(50_000_000)
            async with http.get(hoinghi_server.url + "/metrics") as r:
                text = await r.text()
            assert _value(text, "hoinghi_egress_bps", what="capacity") == 50_000_000
            assert _value(text, "hoinghi_egress_limited_receivers") == 0  # far more than two sites need
        finally:
            await pub.close()
            await sub.close()
