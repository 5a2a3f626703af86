"""The forwarding benchmark's harness, end to end, for a few seconds (no timing asserts).

1 raw publisher -> 3 raw subscribers against a real `hoinghi serve` process: real
signaling, ICE, DTLS and SRTP; synthetic VP8 with send stamps. The figures the benchmark
prints must be consistent: what the subscribers received is what the publisher sent times
three, nothing was lost on loopback, every decrypted packet gave a latency sample.

The stream is kept small (50 packets/s of 200 bytes) so that it fits under any starting
downlink estimate of the server's congestion control: this checks the harness, not the
allocator.
"""

from __future__ import annotations

import math

import pytest

from loadtest import bench_forward

pytestmark = pytest.mark.slow


async def test_fanout_1_to_3_is_consistent():
    args = bench_forward.parse_args(
        [
            "--scenario", "fanout", "--subscribers", "3", "--seconds", "3",
            "--rate", "50", "--fps", "25", "--payload", "200", "--feedback", "rr",
            "--no-pin", "--quiet-wait", "0", "--busy-retries", "0",
            "--warmup", "0.5", "--steady", "1", "--flow-timeout", "30",
        ]
    )
    results = await bench_forward.main_async(args)
    assert len(results) == 1
    r = results[0]
    assert r["target"] == "hoinghi" and r["receivers"] == 3 and r["fanout"] == 3
    assert r["steady"], "media never reached all three subscribers"
    assert r["sent_video"] > 50
    # received ~= sent x subscribers (a packet or two per subscriber in flight at the edges)
    assert abs(r["forwarded"] - 3 * r["sent_video"]) <= 3 * 3, r
    assert r["lost"] == 0 and r["loss_pct"] == 0.0, r
    assert r["bad_srtp"] == 0 and r["bad_stamps"] == 0, r
    # every packet was decrypted (decrypt_every 1) and carried a readable send stamp
    assert r["latency_samples"] == r["forwarded"], r
    assert not math.isnan(r["lat_p50_ms"]) and not math.isnan(r["lat_p99_ms"])
    assert r["lat_p50_ms"] >= 0 and r["lat_p99_ms"] >= r["lat_p50_ms"]
    assert r["server_cpu_s"] >= 0 and r["cpu_s_per_1000"] >= 0
