"""`/metrics` reflects a live meeting: participants, streams, packets flowing."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from loadtest.peer import SyntheticSite
from loadtest.rehearse import histogram_quantiles, parse_metrics

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
        # (the histogram is per process: earlier tests' in-process servers counted into it too)
        forwarded0 = _value(text, "hoinghi_forward_delay_seconds_count")
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
            # every packet sent is in the pacer-wait histogram (those that never queued at 0)
            assert _value(text, "hoinghi_pacer_wait_seconds_count") == _value(
                text, "hoinghi_packets_total", meeting="demo", direction="out"
            )
            q = histogram_quantiles({}, parse_metrics(text), "hoinghi_pacer_wait_seconds", (0.5, 0.99))
            assert q is not None and 0 < q[0] <= q[1] and q[1] != 0
            # every media packet fanned out to a subscriber is timed from the kernel's receive
            # stamp (a packet with no stamp is not counted: the count shows the stamps arrive)
            forwarded = _value(text, "hoinghi_forward_delay_seconds_count") - forwarded0
            assert 50 <= forwarded <= _value(text, "hoinghi_packets_total", meeting="demo", direction="in")
            assert histogram_quantiles({}, parse_metrics(text), "hoinghi_forward_delay_seconds", (0.5,)) is not None
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


def test_histogram_quantiles_read_the_window_between_two_scrapes() -> None:
    def scrape(counts: list[int]) -> dict:
        text = "".join(
            f'h_bucket{{le="{b}"}} {c}\n' for b, c in zip(("0.001", "0.01", "0.1", "+Inf"), counts)
        )
        return parse_metrics(text)

    m0 = scrape([100, 100, 100, 100])  # before the window: all fast
    m1 = scrape([190, 198, 199, 200])  # in it: 90 of 100 within 1 ms, 8 more within 10, 1 within 100, 1 over
    assert histogram_quantiles(m0, m1, "h", (0.5, 0.9, 0.98, 0.99, 1.0)) == (1.0, 1.0, 10.0, 100.0, -100.0)
    assert histogram_quantiles(m1, m1, "h", (0.5,)) is None  # nothing in the window
