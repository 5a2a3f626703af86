"""Transport-wide congestion control feedback (draft-holmer-rmcat-transport-wide-cc-extensions-01).

The SFU stamps every packet it sends on a transport with a 16-bit transport-wide sequence
number and remembers when it sent it and how big it was (`SendHistory`). The browser answers
with RTPFB FMT=15 packets saying which of those arrived and when (`parse_feedback`). aiortc
understands none of it. Together they give the per-packet (send time, arrival time, size)
triples that a delay-based estimator needs, and the loss of exactly what the SFU sent
(not of what the publisher lost upstream).
"""

from __future__ import annotations

import struct
from array import array
from itertools import accumulate
from typing import Optional

_SIZE = 1 << 14  # remembered packets per transport (~2 s at 8k packets/s)
_MASK = _SIZE - 1
HISTORY_SIZE = _SIZE  # the native send path writes these arrays too (media/_fastpath.c)


class SendHistory:
    """seq -> (send time in seconds, wire size in bytes, probe flag), in flat arrays.

    `array`s, not lists: a list of 16,384 numbers is a container the garbage collector walks
    element by element on every full pass; four per transport at 80 sites per worker were
    5.4 million elements, most of a 200 ms pause with the forwarding path stopped. An
    array holds no references, so the collector does not look inside it."""

    __slots__ = ("seq", "times", "sizes", "seqs", "probe")

    def __init__(self) -> None:
        self.seq = 0
        self.times = array("d", bytes(8 * _SIZE))
        self.sizes = array("i", bytes(4 * _SIZE))
        self.seqs = array("i", [-1]) * _SIZE
        self.probe = array("b", bytes(_SIZE))

    def next(self, now: float, size: int, probe: bool = False) -> int:
        seq = self.seq
        i = seq & _MASK
        self.times[i] = now
        self.sizes[i] = size
        self.seqs[i] = seq
        self.probe[i] = probe
        self.seq = (seq + 1) & 0xFFFF
        return seq

    def get(self, seq: int) -> Optional[tuple[float, int, bool]]:
        i = seq & _MASK
        if self.seqs[i] != seq:
            return None
        return self.times[i], self.sizes[i], bool(self.probe[i])


_ONE_BIT: dict[int, tuple[int, ...]] = {}  # status-vector chunk -> its symbols, built on first sight
_TWO_BIT: dict[int, tuple[int, ...]] = {}


def _vector(chunk: int) -> tuple[int, ...]:
    if chunk & 0x4000 == 0:  # 14 one-bit symbols
        return tuple((chunk >> bit) & 0x1 for bit in range(13, -1, -1))
    return tuple((chunk >> shift) & 0x3 for shift in range(12, -1, -2))  # 7 two-bit symbols


def parse_arrivals(payload: bytes) -> tuple[int, list[Optional[float]]]:
    """Decode an FCI (everything after the 12-byte RTPFB header) into (base seq, arrivals):
    arrivals[k] is the arrival time in seconds, on the receiver's clock, of transport seq
    base+k, or None when reported lost. Raises ValueError on a malformed packet.

    Per-packet Python work is kept to the deltas: chunks expand through cached tables, and
    a feedback where every packet arrived with a small delta (the usual case) is one
    accumulate over the delta bytes.
    """
    if len(payload) < 8:
        raise ValueError("transport-cc feedback too short")
    base, count, ref_hi, ref_lo, _fb_count = struct.unpack_from("!HHBHB", payload, 0)
    reference = (ref_hi << 16) | ref_lo
    if reference & 0x800000:
        reference -= 1 << 24
    pos = 8
    symbols: list[int] = []
    extend = symbols.extend
    n = len(payload)
    while len(symbols) < count:
        if pos + 2 > n:
            raise ValueError("transport-cc status chunks truncated")
        chunk = (payload[pos] << 8) | payload[pos + 1]
        pos += 2
        if chunk & 0x8000 == 0:  # run length chunk
            extend([(chunk >> 13) & 0x3] * min(chunk & 0x1FFF, count - len(symbols)))
        else:
            table = _ONE_BIT if chunk & 0x4000 == 0 else _TWO_BIT
            vec = table.get(chunk)
            if vec is None:
                vec = table[chunk] = _vector(chunk)
            extend(vec)
    del symbols[count:]
    t0 = reference * 256  # in 250 us units (64 ms = 256 x 250 us)
    if 0 not in symbols and 2 not in symbols and 3 not in symbols:
        if pos + count > n:
            raise ValueError("transport-cc deltas truncated")
        return base, [(t0 + c) * 0.00025 for c in accumulate(payload[pos : pos + count])]
    out: list[Optional[float]] = []
    append = out.append
    t = t0
    for symbol in symbols:
        if symbol == 1:
            if pos >= n:
                raise ValueError("transport-cc deltas truncated")
            t += payload[pos]
            pos += 1
            append(t * 0.00025)
        elif symbol == 2:
            if pos + 2 > n:
                raise ValueError("transport-cc deltas truncated")
            delta = (payload[pos] << 8) | payload[pos + 1]
            t += delta - 0x10000 if delta & 0x8000 else delta
            pos += 2
            append(t * 0.00025)
        else:
            append(None)
    return base, out


def parse_feedback(payload: bytes) -> list[tuple[int, Optional[float]]]:
    """(transport seq, arrival time s or None) per reported packet, in sequence order."""
    base, arrivals = parse_arrivals(payload)
    return [((base + k) & 0xFFFF, a) for k, a in enumerate(arrivals)]


def build_feedback(sender_ssrc: int, media_ssrc: int, base: int, arrivals: list[Optional[float]], fb_count: int) -> bytes:
    """Build one feedback packet (used by synthetic receivers and tests).

    `arrivals[k]` is the arrival time (s) of seq base+k, or None if not received.
    """
    first = next((a for a in arrivals if a is not None), 0.0)
    reference = int(first / 0.064) & 0xFFFFFF
    t = (reference if reference < 0x800000 else reference - (1 << 24)) * 0.064
    symbols = []
    deltas = bytearray()
    for a in arrivals:
        if a is None:
            symbols.append(0)
            continue
        d = int(round((a - t) / 0.00025))
        if 0 <= d <= 255:
            symbols.append(1)
            deltas.append(d)
        else:
            d = max(-32768, min(32767, d))
            symbols.append(2)
            deltas += struct.pack("!h", d)
        t += d * 0.00025
    chunks = bytearray()
    for i in range(0, len(symbols), 7):
        part = symbols[i : i + 7]
        word = 0xC000
        for j, s in enumerate(part):
            word |= s << (12 - 2 * j)
        chunks += struct.pack("!H", word)
    fci = struct.pack("!HHBHB", base, len(arrivals), reference >> 16, reference & 0xFFFF, fb_count & 0xFF) + chunks + deltas
    while len(fci) % 4:
        fci += b"\x00"
    length = (8 + len(fci)) // 4
    return struct.pack("!BBHII", 0x80 | 15, 205, length, sender_ssrc, media_ssrc) + fci
