"""What the SFU adds to a packet's latency, measured where it happens.

Three places hold a packet up inside the server: the socket buffer (until the worker's event
loop reads it), the forwarding path (one received packet fans out to up to 163 subscribers,
one after the other) and the per-site pacers. The pacers time their own queue
(transport.pace_waited). For the first two, every received media packet carries the time the
kernel received it (`KernelArrival`, SIOCGSTAMPNS), through the pipe to other workers as
well, and the time from then until its last copy was handed on (to the kernel, a pacer or a
pipe) goes into `FORWARD_DELAY`: one histogram per process, read by /metrics
(`hoinghi_forward_delay_seconds`). Kernel to kernel, so it holds whatever the machine is
doing and nothing the sites' own software does.
"""

from __future__ import annotations

import fcntl
import struct
import time
from typing import Any

#: bucket bounds (s) of the latency histograms (pacer wait, forward delay, event-loop lag,
#: garbage-collector pauses); one more bucket: longer
LATENCY_BOUNDS_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0)

#: received media packets by how long after the kernel got them their last copy left
#: (this process; see the module docstring)
FORWARD_DELAY = [0] * (len(LATENCY_BOUNDS_S) + 1)

SIOCGSTAMPNS = 0x8907  # linux/sockios.h: kernel receive time of the socket's last datagram
_unpack_timespec = struct.Struct("@qq").unpack_from
_monotonic_ns = time.monotonic_ns


def add_counts(acc: list[int], counts: list[int]) -> list[int]:
    """Add one histogram's bucket counts into another (grown as needed); returns acc."""
    if len(acc) < len(counts):
        acc.extend([0] * (len(counts) - len(acc)))
    for i, n in enumerate(counts):
        acc[i] += n
    return acc


class KernelArrival:
    """When the kernel received a socket's latest datagram, on the monotonic clock (ns).

    Why: the time a packet is *handled* hides how long it waited in the socket buffer for a
    busy event loop, which is part of what a server adds to latency (and, at a load
    generator's sites, a backlog no browser would have, which transport-cc feedback would
    show as queueing on the link). SIOCGSTAMPNS returns the stamp the kernel put on the
    datagram the last recv returned: the one being handled, as asyncio and uvloop read one
    datagram and hand it to the protocol in the same callback. One ioctl (~1.5 us) per
    datagram; on any failure the time of handling, as before.
    """

    __slots__ = ("fd", "buf", "offset", "offset_at", "stamped", "fallbacks")

    def __init__(self, sock: Any) -> None:
        self.fd = -1
        try:
            self.fd = sock.fileno()
        except (AttributeError, OSError):
            pass
        self.buf = bytearray(16)
        self.offset = time.time_ns() - _monotonic_ns()
        self.offset_at = _monotonic_ns()
        self.stamped = 0
        self.fallbacks = 0
        if self.fd >= 0:
            try:  # the first call switches stamping on for the socket (ENOENT until a datagram came)
                fcntl.ioctl(self.fd, SIOCGSTAMPNS, self.buf, True)
            except OSError:
                pass

    def __call__(self) -> int:
        now = _monotonic_ns()
        if self.fd < 0:
            return now
        try:
            fcntl.ioctl(self.fd, SIOCGSTAMPNS, self.buf, True)
        except OSError:
            self.fallbacks += 1
            return now
        if now - self.offset_at > 1_000_000_000:  # the wall clock is slewed: follow it
            self.offset = time.time_ns() - _monotonic_ns()
            self.offset_at = now
        s, ns = _unpack_timespec(self.buf)
        t = s * 1_000_000_000 + ns - self.offset
        if t > now:
            return now
        if now - t > 2_000_000_000:  # not this datagram's stamp (stamping was off when it came)
            self.fallbacks += 1
            return now
        self.stamped += 1
        return t
