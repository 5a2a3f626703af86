"""Arrival times of the synthetic sites come from the kernel, not from when Python got round
to the packet: a busy generator must not show up as queueing on the SFU's downlinks."""

from __future__ import annotations

import asyncio
import random
import socket
import time

from loadtest.sitesim import _Direction
from media.timing import KernelArrival


def test_kernel_arrival_keeps_the_spacing_of_a_blocked_loop() -> None:
    async def main() -> list[tuple[int, int]]:
        loop = asyncio.get_running_loop()
        got: list[tuple[int, int]] = []

        class Proto(asyncio.DatagramProtocol):
            clock: KernelArrival

            def connection_made(self, transport) -> None:  # type: ignore[override]
                self.clock = KernelArrival(transport.get_extra_info("socket"))

            def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[override]
                got.append((self.clock(), time.monotonic_ns()))

        transport, _ = await loop.create_datagram_endpoint(Proto, local_addr=("127.0.0.1", 0))
        addr = transport.get_extra_info("sockname")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            tx.sendto(b"warm-up", addr)  # stamping is switched on by the first ioctl
            await asyncio.sleep(0.05)
            got.clear()
            for _ in range(4):  # the loop is blocked: all four are read in one go, later
                tx.sendto(b"x", addr)
                time.sleep(0.03)
        await asyncio.sleep(0.05)
        transport.close()
        return got

    got = asyncio.run(main())
    assert len(got) == 4
    stamped = [a for a, _ in got]
    handled = [h for _, h in got]
    # handled back to back once the loop woke up; stamped as sent, >= 30 ms apart
    assert all(b - a >= 25_000_000 for a, b in zip(stamped, stamped[1:])), [b - a for a, b in zip(stamped, stamped[1:])]
    assert handled[-1] - stamped[-1] >= 0
    assert handled[0] - stamped[0] >= 60_000_000  # the first waited for the other three sends


def test_shaped_link_delivers_at_the_links_time_not_the_generators() -> None:
    async def main() -> tuple[list[int], list[int]]:
        loop = asyncio.get_running_loop()
        entered = time.monotonic_ns() - 40_000_000  # the kernel got it 40 ms ago; Python is late
        delivered: list[int] = []
        d = _Direction(loop, lambda data: delivered.append(d.delivering_ns), None, 0.1, 0.0, 0.2, random.Random(1),
                       clock_ns=lambda: entered)
        d.push(b"\x80" * 100)
        await asyncio.sleep(0.15)
        return delivered, [entered]

    delivered, (entered,) = asyncio.run(main())
    # a 100 ms link delay from when the packet reached the link, not from when it was handled
    assert len(delivered) == 1 and abs(delivered[0] - (entered + 100_000_000)) < 1000  # (float seconds inside)


class _Wire:
    """Stands in for a RawTransport's sending side: counts what leaves."""

    def __init__(self) -> None:
        self.bytes = 0

    def send_rtp(self, packet: bytearray) -> bool:
        self.bytes += len(packet)
        return True

    def send_rtcp(self, packet: bytes) -> None:
        pass


def test_a_late_generator_catches_up_instead_of_queueing_for_seconds() -> None:
    """Ticks 150 ms apart (a starved generator; the pacer wants 5 ms): every frame still
    leaves within about a tick of its capture time, and the backlog does not grow."""
    from loadtest import media_sender
    from loadtest.media_sender import SimulcastSource
    from loadtest.media_source import LayerSpec, SyntheticMedia

    media = SyntheticMedia.load(seconds=2.5, layers=(LayerSpec("q", 320, 180, 150_000),))
    wire = _Wire()
    src = SimulcastSource(wire, media, 96, rtx_payload_type=None, mid="0", seed=1)  # type: ignore[arg-type]
    hist0 = list(media_sender.send_lag_hist)
    now = 1000.0
    for _ in range(int(10 / 0.15)):
        src.tick(now)
        now += 0.15
    lags = [b - a for a, b in zip(hist0, media_sender.send_lag_hist)]
    frames = sum(lags)
    assert frames >= 0.9 * 10 * media.fps
    within = sum(lags[:250])  # sent within 250 ms of capture
    assert within / frames > 0.95, lags[:200]
    layer = src.layers[0]
    assert len(layer.backlog) < 20, len(layer.backlog)
