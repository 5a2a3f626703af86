"""Transport-cc feedback from a synthetic site, as a browser would send it.

aiortc clients only send REMB, so a server tested with them alone would never exercise the
estimator real browsers drive. This responder makes an aiortc-based synthetic site behave
like Chrome as a receiver: it offers the transport-wide-cc extension, notes the arrival
time of every packet carrying it (read from the RTP header, which SRTP leaves in clear) and
reports them every 50 ms in RTPFB FMT=15 packets (media/twcc.py builds them).
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Optional

from aiortc import RTCPeerConnection

from media.rtp import URI_TRANSPORT_CC
from media.twcc import build_feedback

from .shaper import KernelStamps

EXT_ID = 5  # unused by aiortc's own extensions (1 mid, 2 audio level, 3 abs-send-time)
INTERVAL = 0.05
#: libwebrtc's RemoteEstimatorProxy keeps arrivals for 500 ms: after a longer silence (a
#: link that was down) its next feedback starts at the first packet after the silence, so
#: the packets lost in an outage are never reported as congestion losses.
BACK_WINDOW = 0.5


def offer_transport_cc(sdp: str, ext_id: int = EXT_ID) -> str:
    """Add the transport-cc extension and feedback to every audio/video m-section."""
    out = []
    for section in re.split(r"(?=^m=)", sdp, flags=re.MULTILINE):
        if section.startswith(("m=audio", "m=video")):
            lines = section.split("\r\n")
            pts = [m.group(1) for line in lines if (m := re.match(r"a=rtpmap:(\d+) (VP8|opus)/", line))]
            extra = [f"a=extmap:{ext_id} {URI_TRANSPORT_CC}"] + [f"a=rtcp-fb:{pt} transport-cc" for pt in pts]
            idx = next((i for i, line in enumerate(lines) if line.startswith("a=mid:")), 1)
            lines[idx + 1 : idx + 1] = extra
            section = "\r\n".join(lines)
        out.append(section)
    return "".join(out)


class TransportCcResponder:
    def __init__(self, pc: RTCPeerConnection, ext_id: int = EXT_ID) -> None:
        self.pc = pc
        self.ext_id = ext_id
        self.received: dict[int, float] = {}  # unwrapped seq -> arrival
        self._max: Optional[int] = None  # highest unwrapped seq seen
        self._next: Optional[int] = None  # first unwrapped seq not yet reported
        self._count = 0
        self._last_arrival = 0.0
        self._task: Optional[asyncio.Task] = None
        self._epoch = time.monotonic()
        self.feedbacks = 0

    def attach(self) -> None:
        transceivers = self.pc.getTransceivers()
        ice = transceivers[0].receiver.transport.transport._connection
        original = ice.data_received
        kernel = KernelStamps(ice)

        def data_received(data: bytes, component: int) -> None:
            if len(data) > 12 and 127 < data[0] < 192 and not (192 <= data[1] <= 208):
                # arrival: a link shaper's delivery time if one sits outside (LinkImpairment),
                # else the kernel's receive stamp: a browser's network thread reads packets
                # as they come; this process may be late (GCC would read that as queueing)
                self._note(data, getattr(ice, "hoinghi_arrival", 0.0) or kernel())
            original(data, component)

        ice.data_received = data_received
        self._task = asyncio.ensure_future(self._run())

    def _note(self, data: bytes, arrival: float) -> None:
        b0 = data[0]
        if not b0 & 0x10:
            return
        pos = 12 + 4 * (b0 & 0x0F)
        if pos + 4 > len(data) or data[pos] != 0xBE or data[pos + 1] != 0xDE:
            return
        end = pos + 4 + 4 * ((data[pos + 2] << 8) | data[pos + 3])
        i = pos + 4
        while i < end and i < len(data):
            b = data[i]
            if b == 0:
                i += 1
                continue
            ext_id, length = b >> 4, (b & 0x0F) + 1
            if ext_id == 15:
                return
            if ext_id == self.ext_id and length == 2 and i + 2 < len(data):
                self._record((data[i + 1] << 8) | data[i + 2], arrival)
                return
            i += 1 + length

    def _record(self, seq16: int, arrival: float) -> None:
        now = arrival - self._epoch
        if self._max is None:
            unwrapped = seq16
            self._next = seq16
        else:
            delta = (seq16 - (self._max & 0xFFFF)) & 0xFFFF
            unwrapped = self._max + delta if delta < 0x8000 else self._max - (0x10000 - delta)
        if self._next is not None and unwrapped < self._next:
            return  # already reported as lost: too late
        if self._max is not None and now - self._last_arrival > BACK_WINDOW and unwrapped > self._max:
            self._next = unwrapped  # after a silence: a new feedback window (see BACK_WINDOW)
            self.received.clear()
        self._last_arrival = now
        self.received[unwrapped] = now
        if self._max is None or unwrapped > self._max:
            self._max = unwrapped

    async def _run(self) -> None:
        dtls = self.pc.getTransceivers()[0].receiver.transport
        try:
            while True:
                await asyncio.sleep(INTERVAL)
                if self._max is None or self._next is None or self._next > self._max:
                    continue
                if dtls.state != "connected":
                    continue
                start, end = self._next, self._max
                while start <= end:
                    stop = min(end, start + 200)
                    arrivals = [self.received.pop(s, None) for s in range(start, stop + 1)]
                    packet = build_feedback(1, 0, start & 0xFFFF, arrivals, self._count)
                    self._count += 1
                    self.feedbacks += 1
                    await dtls._send_rtp(packet)
                    start = stop + 1
                self._next = end + 1
        except (asyncio.CancelledError, ConnectionError):
            pass

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
