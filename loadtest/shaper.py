"""In-process link impairment for synthetic sites: loss and a rate cap on a peer connection.

This kernel has no netem, so loss cannot be added with tc; and synthetic sites in a load
test should not need root anyway. The impairment is applied on the *client* side of the
link (the synthetic site's own aiortc transport), never inside the server, so the server's
packet path under test is exactly the production one.

Only SRTP is dropped: STUN and DTLS must get through, as they would on a lossy link
that still carries the occasional handshake retry.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Optional

from aiortc import RTCPeerConnection

from media.timing import KernelArrival


class KernelStamps:
    """Kernel receive times (monotonic s) of the datagrams an aiortc connection's nominated
    pair reads: see media.timing.KernelArrival. Found lazily (the pair is nominated after
    the wrappers are installed); before that, and on any failure, the time of handling."""

    def __init__(self, connection) -> None:
        self.connection = connection
        self.clock: Optional[KernelArrival] = None
        self.protocol = None

    def __call__(self) -> float:
        pair = self.connection._nominated.get(1)
        if pair is None:
            return time.monotonic()
        if pair.protocol is not self.protocol:
            self.protocol = pair.protocol
            self.clock = KernelArrival(pair.protocol.transport.get_extra_info("socket"))
        return self.clock() * 1e-9  # type: ignore[misc]


class LinkImpairment:
    """Random loss both ways, and a downlink capped like `tc tbf`: a token bucket drained at
    `downstream_bps`, packets queued up to `queue_ms` of data, later ones dropped."""

    def __init__(
        self,
        upstream_loss: float = 0.0,
        downstream_loss: float = 0.0,
        seed: Optional[int] = None,
        downstream_bps: Optional[float] = None,
        queue_ms: float = 100.0,
    ) -> None:
        self.upstream_loss = upstream_loss
        self.downstream_loss = downstream_loss
        self.downstream_bps = downstream_bps
        self.queue_ms = queue_ms
        self._free_at = 0.0  # when the shaped link has sent everything queued so far
        self.dropped_queue = 0
        self.upstream_pts: Optional[set[int]] = None  # restrict upstream loss to these payload types
        self.passed_bytes = 0  # RTP bytes (+ IP/UDP headers) delivered downstream
        self._rng = random.Random(seed)
        self.dropped_up = 0
        self.dropped_down = 0
        self.passed_up = 0
        self.passed_down = 0

    @staticmethod
    def _is_rtp(data: bytes) -> bool:
        return len(data) > 1 and 127 < data[0] < 192 and not (192 <= data[1] <= 208)

    def attach(self, pc: RTCPeerConnection) -> None:
        """Wrap the ICE transport of `pc` (call after setLocalDescription, before media flows)."""
        transceivers = pc.getTransceivers()
        if not transceivers:
            return
        ice_transport = transceivers[0].receiver.transport.transport
        connection = ice_transport._connection
        original_send = ice_transport._send
        original_received = connection.data_received

        async def send(data: bytes) -> None:
            if self.upstream_loss and self._is_rtp(data):
                if (self.upstream_pts is None or (data[1] & 0x7F) in self.upstream_pts) and self._rng.random() < self.upstream_loss:
                    self.dropped_up += 1
                    return
                self.passed_up += 1
            await original_send(data)

        loop = asyncio.get_running_loop()
        kernel = KernelStamps(connection)

        def deliver(data: bytes, component: int, at: float) -> None:
            # what the receiver stamps (transport-cc) is when the link hands the packet on
            connection.hoinghi_arrival = at
            try:
                original_received(data, component)
            finally:
                connection.hoinghi_arrival = 0.0

        def data_received(data: bytes, component: int) -> None:
            if self._is_rtp(data):
                if self.downstream_loss and self._rng.random() < self.downstream_loss:
                    self.dropped_down += 1
                    return
                rate = self.downstream_bps
                # the link's clock starts when the kernel got the packet, not when this
                # (busy) process got round to it
                arrived = kernel()
                if rate:
                    start = max(arrived, self._free_at)
                    if start - arrived > self.queue_ms / 1000.0:
                        self.dropped_queue += 1
                        return
                    self._free_at = start + (len(data) + 28) * 8 / rate
                    self.passed_down += 1
                    self.passed_bytes += len(data) + 28
                    loop.call_at(loop.time() + (self._free_at - time.monotonic()), deliver, data, component, self._free_at)
                    return
                self.passed_down += 1
                self.passed_bytes += len(data) + 28
                deliver(data, component, arrived)
                return
            original_received(data, component)

        ice_transport._send = send
        connection.data_received = data_received


class LinkCut:
    """A site's network drops completely (cable pulled, radio link lost): nothing in or out on
    its ICE sockets, STUN consent checks and DTLS included, until `restore()`.

    Applied on the client's sockets (aioice protocols) after the connection is up, so the
    server sees exactly what it would see from a dead link: silence, then the same 5-tuple
    coming back.
    """

    def __init__(self) -> None:
        self.down = False
        self.dropped_in = 0
        self.dropped_out = 0

    def attach(self, pc: RTCPeerConnection) -> None:
        transceivers = pc.getTransceivers()
        if not transceivers:
            return
        connection = transceivers[0].receiver.transport.transport._connection
        for protocol in connection._protocols:
            self._wrap(protocol)

    def _wrap(self, protocol) -> None:  # aioice StunProtocol
        received = protocol.datagram_received
        transport = protocol.transport
        sendto = transport.sendto
        cut = self

        def datagram_received(data: bytes, addr: tuple) -> None:
            if cut.down:
                cut.dropped_in += 1
                return
            received(data, addr)

        class _Transport:
            """The datagram transport, with sendto gated by the cut."""

            def __getattr__(self, name: str):
                return getattr(transport, name)

            def sendto(self, data: bytes, addr=None) -> None:
                if cut.down:
                    cut.dropped_out += 1
                    return
                sendto(data, addr)

        protocol.datagram_received = datagram_received
        protocol.transport = _Transport()

    def cut(self) -> None:
        self.down = True

    def restore(self) -> None:
        self.down = False
