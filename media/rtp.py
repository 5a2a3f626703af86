"""RTP header parsing for the forwarding path (RFC 3550, RFC 8285 header extensions).

aiortc's RtpPacket.parse costs 4-5 us, allocates a dict of extensions and drops the ones it
does not know. The SFU needs a handful of facts per packet (SSRC, seq, ts, marker, where the
payload starts, a few extension values) and nothing else, so `parse_rtp` reads exactly those
with direct byte indexing and returns one small slotted object. It is called once per
*incoming* packet; everything per *subscriber* works from that object without re-parsing.
"""

from __future__ import annotations

from typing import Optional

# What one RTP packet costs on the wire beyond its RTP bytes: the SRTP auth tag (10, AES-CM
# HMAC-SHA1-80) plus IPv4 and UDP headers (28). Rates that are compared with a link's capacity
# (layer rates, the bandwidth estimate, probes) count it, as libwebrtc's send-side BWE does: a
# 180p layer in 300-byte packets costs 13 % more than its payload says.
WIRE_OVERHEAD = 38
WIRE_UDP_IP = 28  # of that, what a sent datagram's length (SRTP bytes) does not hold

# Header-extension kinds the forwarding core understands. A per-transport table maps the
# negotiated extension id (1..14, or 1..255 for two-byte headers) to one of these.
EXT_NONE = 0
EXT_MID = 1
EXT_RID = 2
EXT_RRID = 3
EXT_AUDIO_LEVEL = 4
EXT_ABS_SEND_TIME = 5
EXT_TRANSPORT_CC = 6
EXT_VIDEO_ORIENTATION = 7

URI_MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
URI_RID = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
URI_RRID = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
URI_AUDIO_LEVEL = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
URI_ABS_SEND_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
URI_TRANSPORT_CC = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
URI_VIDEO_ORIENTATION = "urn:3gpp:video-orientation"

EXT_KIND_BY_URI = {
    URI_MID: EXT_MID,
    URI_RID: EXT_RID,
    URI_RRID: EXT_RRID,
    URI_AUDIO_LEVEL: EXT_AUDIO_LEVEL,
    URI_ABS_SEND_TIME: EXT_ABS_SEND_TIME,
    URI_TRANSPORT_CC: EXT_TRANSPORT_CC,
    URI_VIDEO_ORIENTATION: EXT_VIDEO_ORIENTATION,
}


def ext_table(uri_to_id: dict[str, int]) -> list[int]:
    """Build the id -> kind lookup used by parse_rtp (a flat list is faster than a dict)."""
    table = [EXT_NONE] * 256
    for uri, ext_id in uri_to_id.items():
        kind = EXT_KIND_BY_URI.get(uri)
        if kind and 0 < ext_id < 256:
            table[ext_id] = kind
    return table


class RtpInfo:
    """What the SFU knows about one received RTP packet after a single parse.

    `data` is the decrypted packet and is shared (never mutated) by every subscriber that
    forwards it; each subscriber copies the payload into its own rewritten header.
    """

    __slots__ = (
        "data",
        "ssrc",
        "seq",
        "ts",
        "pt",
        "marker",
        "padding",
        "payload_offset",
        "mid",
        "rid",
        "rrid",
        "audio_level",
        "orientation",
        "tcc_seq",
        "keyframe",
        "vp8_pid_off",
        "vp8_pid_wide",
        "vp8_tl0_off",
        "vp8_tid",
        "vp8_start",
        "arrival",
        "abs24",
        "payload",
    )

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.mid: Optional[str] = None
        self.rid: Optional[str] = None
        self.rrid: Optional[str] = None
        self.audio_level = -1
        self.orientation = -1
        self.tcc_seq = -1
        self.keyframe = False
        self.vp8_pid_off = -1
        self.vp8_pid_wide = False
        self.vp8_tl0_off = -1
        self.vp8_tid = 0
        self.vp8_start = False
        self.arrival = 0.0  # when the kernel received it (monotonic s); 0: not known


def parse_rtp(data: bytes, ext_kinds: list[int]) -> RtpInfo:
    """Parse the fixed header and the extensions listed in `ext_kinds`.

    Raises ValueError for anything that is not a well-formed RTP v2 packet, so a malformed
    packet from one site is dropped before it reaches any subscriber.
    """
    n = len(data)
    if n < 12:
        raise ValueError("RTP packet too short")
    b0 = data[0]
    if b0 >> 6 != 2:
        raise ValueError("not RTP version 2")
    info = RtpInfo(data)
    b1 = data[1]
    info.marker = b1 >> 7
    info.pt = b1 & 0x7F
    info.seq = (data[2] << 8) | data[3]
    info.ts = (data[4] << 24) | (data[5] << 16) | (data[6] << 8) | data[7]
    info.ssrc = (data[8] << 24) | (data[9] << 16) | (data[10] << 8) | data[11]
    pos = 12 + 4 * (b0 & 0x0F)
    if b0 & 0x10:
        if pos + 4 > n:
            raise ValueError("RTP extension header truncated")
        profile = (data[pos] << 8) | data[pos + 1]
        length = ((data[pos + 2] << 8) | data[pos + 3]) * 4
        start = pos + 4
        pos = start + length
        if pos > n:
            raise ValueError("RTP extension block truncated")
        if profile == 0xBEDE:
            _parse_one_byte(info, data, start, pos, ext_kinds)
        elif profile & 0xFFF0 == 0x1000:
            _parse_two_byte(info, data, start, pos, ext_kinds)
    end = n
    if b0 & 0x20:
        pad = data[n - 1]
        if pad == 0 or pos + pad > n:
            raise ValueError("RTP padding length invalid")
        end = n - pad
        info.padding = pad
    else:
        info.padding = 0
    if pos > end:
        raise ValueError("RTP header longer than packet")
    info.payload_offset = pos
    return info


def _store(info: RtpInfo, kind: int, data: bytes, i: int, length: int) -> None:
    if kind == EXT_AUDIO_LEVEL:
        info.audio_level = data[i]
    elif kind == EXT_MID:
        info.mid = data[i : i + length].decode("ascii", "replace")
    elif kind == EXT_RID:
        info.rid = data[i : i + length].decode("ascii", "replace")
    elif kind == EXT_RRID:
        info.rrid = data[i : i + length].decode("ascii", "replace")
    elif kind == EXT_TRANSPORT_CC and length >= 2:
        info.tcc_seq = (data[i] << 8) | data[i + 1]
    elif kind == EXT_VIDEO_ORIENTATION:
        info.orientation = data[i]


def _parse_one_byte(info: RtpInfo, data: bytes, i: int, end: int, kinds: list[int]) -> None:
    while i < end:
        b = data[i]
        if b == 0:  # padding byte
            i += 1
            continue
        ext_id = b >> 4
        if ext_id == 15:
            return
        length = (b & 0x0F) + 1
        i += 1
        if i + length > end:
            raise ValueError("RTP one-byte extension truncated")
        kind = kinds[ext_id]
        if kind:
            _store(info, kind, data, i, length)
        i += length


def _parse_two_byte(info: RtpInfo, data: bytes, i: int, end: int, kinds: list[int]) -> None:
    while i + 1 < end:
        ext_id = data[i]
        if ext_id == 0:
            i += 1
            continue
        length = data[i + 1]
        i += 2
        if i + length > end:
            raise ValueError("RTP two-byte extension truncated")
        kind = kinds[ext_id]
        if kind and length:
            _store(info, kind, data, i, length)
        i += length


def seq_newer(a: int, b: int) -> bool:
    """True if 16-bit sequence number a is newer than b (RFC 1982 serial arithmetic)."""
    return a != b and ((a - b) & 0xFFFF) < 0x8000


def ts_newer(a: int, b: int) -> bool:
    return a != b and ((a - b) & 0xFFFFFFFF) < 0x80000000
