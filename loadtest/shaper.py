"""In-process link impairment for synthetic sites: loss on a peer connection's RTP.

This kernel has no netem, so loss cannot be added with tc; and synthetic sites in a load
test should not need root anyway. The impairment is applied on the *client* side of the
link (the synthetic site's own aiortc transport), never inside the server, so the server's
packet path under test is exactly the production one.

Only SRTP is dropped: STUN and DTLS must get through, as they would on a lossy link
that still carries the occasional handshake retry.
"""

from __future__ import annotations

import random
from typing import Optional

from aiortc import RTCPeerConnection


class LinkImpairment:
    def __init__(self, upstream_loss: float = 0.0, downstream_loss: float = 0.0, seed: Optional[int] = None) -> None:
        self.upstream_loss = upstream_loss
        self.downstream_loss = downstream_loss
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
                if self._rng.random() < self.upstream_loss:
                    self.dropped_up += 1
                    return
                self.passed_up += 1
            await original_send(data)

        def data_received(data: bytes, component: int) -> None:
            if self.downstream_loss and self._is_rtp(data):
                if self._rng.random() < self.downstream_loss:
                    self.dropped_down += 1
                    return
                self.passed_down += 1
            original_received(data, component)

        ice_transport._send = send
        connection.data_received = data_received
