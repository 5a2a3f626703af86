"""RTCP parsing and building for the SFU (RFC 3550, RFC 4585, RFC 5104, REMB draft).

aiortc's RTCP code reads every RTPFB format as a NACK, never delivers FIR (media SSRC 0) and
has no transport-cc, so the forwarding core handles RTCP itself. Parsing yields plain tuples
keyed by packet type; building writes bytes with struct. RTCP is a few packets per second per
stream, so clarity wins over micro-optimisation here.
"""

from __future__ import annotations

import struct
import time
from typing import Iterator, NamedTuple

SR = 200
RR = 201
SDES = 202
BYE = 203
RTPFB = 205
PSFB = 206

FMT_NACK = 1
FMT_TWCC = 15
FMT_PLI = 1
FMT_FIR = 4
FMT_AFB = 15  # application layer feedback: REMB

NTP_EPOCH_OFFSET = 2208988800  # seconds from 1900-01-01 to 1970-01-01


class ReportBlock(NamedTuple):
    ssrc: int
    fraction_lost: int  # 0..255, fraction since the previous report, x 1/256
    packets_lost: int  # cumulative, signed 24 bit
    highest_seq: int  # extended
    jitter: int  # RTP timestamp units
    lsr: int  # middle 32 bits of the NTP time of the last SR received
    dlsr: int  # delay since that SR, 1/65536 s


class SenderReport(NamedTuple):
    ssrc: int
    ntp: int  # 64-bit NTP timestamp
    rtp_ts: int
    packets: int
    octets: int
    reports: list[ReportBlock]


class ReceiverReport(NamedTuple):
    ssrc: int
    reports: list[ReportBlock]


class Nack(NamedTuple):
    sender_ssrc: int
    media_ssrc: int
    lost: list[int]


class Pli(NamedTuple):
    sender_ssrc: int
    media_ssrc: int


class Fir(NamedTuple):
    sender_ssrc: int
    entries: list[tuple[int, int]]  # (ssrc, command seq nr)


class Remb(NamedTuple):
    sender_ssrc: int
    bitrate: int
    ssrcs: list[int]


class Bye(NamedTuple):
    ssrcs: list[int]


class TransportCcFeedback(NamedTuple):
    """A transport-cc feedback packet, kept raw until a parser needs it (congestion control)."""

    sender_ssrc: int
    payload: bytes


RtcpItem = SenderReport | ReceiverReport | Nack | Pli | Fir | Remb | Bye | TransportCcFeedback


def _report_blocks(data: bytes, pos: int, count: int, end: int) -> list[ReportBlock]:
    blocks = []
    for _ in range(count):
        if pos + 24 > end:
            raise ValueError("RTCP report block truncated")
        ssrc, lost_word, highest, jitter, lsr, dlsr = struct.unpack_from("!IIIIII", data, pos)
        lost = lost_word & 0xFFFFFF
        if lost & 0x800000:
            lost -= 0x1000000
        blocks.append(ReportBlock(ssrc, lost_word >> 24, lost, highest, jitter, lsr, dlsr))
        pos += 24
    return blocks


def parse_compound(data: bytes) -> Iterator[RtcpItem]:
    """Yield the packets of a compound RTCP datagram that the SFU acts on.

    Raises ValueError on the first malformed header; items before it have been yielded, which
    is harmless since each item is self-contained.
    """
    pos = 0
    n = len(data)
    while pos + 4 <= n:
        b0, pt, length = struct.unpack_from("!BBH", data, pos)
        if b0 >> 6 != 2:
            raise ValueError("RTCP version is not 2")
        end = pos + 4 * (length + 1)
        if end > n:
            raise ValueError("RTCP packet truncated")
        count = b0 & 0x1F
        if pt == SR:
            if pos + 28 > end:
                raise ValueError("RTCP SR truncated")
            ssrc, ntp_hi, ntp_lo, rtp_ts, packets, octets = struct.unpack_from("!IIIIII", data, pos + 4)
            yield SenderReport(
                ssrc, (ntp_hi << 32) | ntp_lo, rtp_ts, packets, octets, _report_blocks(data, pos + 28, count, end)
            )
        elif pt == RR:
            if pos + 8 > end:
                raise ValueError("RTCP RR truncated")
            (ssrc,) = struct.unpack_from("!I", data, pos + 4)
            yield ReceiverReport(ssrc, _report_blocks(data, pos + 8, count, end))
        elif pt == RTPFB and end - pos >= 12:
            sender, media = struct.unpack_from("!II", data, pos + 4)
            if count == FMT_NACK:
                lost = []
                for off in range(pos + 12, end - 3, 4):
                    pid, blp = struct.unpack_from("!HH", data, off)
                    lost.append(pid)
                    for bit in range(16):
                        if blp & (1 << bit):
                            lost.append((pid + bit + 1) & 0xFFFF)
                yield Nack(sender, media, lost)
            elif count == FMT_TWCC:
                yield TransportCcFeedback(sender, bytes(data[pos + 12 : end]))
        elif pt == PSFB and end - pos >= 12:
            sender, media = struct.unpack_from("!II", data, pos + 4)
            if count == FMT_PLI:
                yield Pli(sender, media)
            elif count == FMT_FIR:
                entries = []
                for off in range(pos + 12, end - 7, 8):
                    ssrc, seqnr = struct.unpack_from("!IB", data, off)
                    entries.append((ssrc, seqnr))
                yield Fir(sender, entries)
            elif count == FMT_AFB and end - pos >= 20 and data[pos + 12 : pos + 16] == b"REMB":
                num = data[pos + 16]
                exp = data[pos + 17] >> 2
                mantissa = ((data[pos + 17] & 0x03) << 16) | (data[pos + 18] << 8) | data[pos + 19]
                ssrcs = [
                    struct.unpack_from("!I", data, pos + 20 + 4 * i)[0]
                    for i in range(num)
                    if pos + 24 + 4 * i <= end
                ]
                yield Remb(sender, mantissa << exp, ssrcs)
        elif pt == BYE:
            ssrcs = [struct.unpack_from("!I", data, pos + 4 + 4 * i)[0] for i in range(count) if pos + 8 + 4 * i <= end]
            yield Bye(ssrcs)
        pos = end


# ---------------------------------------------------------------- building


def ntp_now() -> int:
    """The current wall-clock time as a 64-bit NTP timestamp."""
    t = time.time() + NTP_EPOCH_OFFSET
    sec = int(t)
    return (sec << 32) | int((t - sec) * 4294967296.0)


def ntp_middle(ntp: int) -> int:
    return (ntp >> 16) & 0xFFFFFFFF


def _header(fmt_or_count: int, pt: int, length_words: int) -> bytes:
    return struct.pack("!BBH", 0x80 | fmt_or_count, pt, length_words)


def pack_report_block(b: ReportBlock) -> bytes:
    lost = b.packets_lost
    if lost < 0:
        lost = max(lost, -0x800000) & 0xFFFFFF
    else:
        lost = min(lost, 0x7FFFFF)
    return struct.pack(
        "!IIIIII", b.ssrc, (b.fraction_lost << 24) | lost, b.highest_seq & 0xFFFFFFFF, b.jitter, b.lsr, b.dlsr
    )


def pack_rr(ssrc: int, blocks: list[ReportBlock]) -> bytes:
    blocks = blocks[:31]
    body = b"".join(pack_report_block(b) for b in blocks)
    return _header(len(blocks), RR, 1 + 6 * len(blocks)) + struct.pack("!I", ssrc) + body


def pack_sr(ssrc: int, ntp: int, rtp_ts: int, packets: int, octets: int) -> bytes:
    return _header(0, SR, 6) + struct.pack(
        "!IIIIII", ssrc, ntp >> 32, ntp & 0xFFFFFFFF, rtp_ts & 0xFFFFFFFF, packets & 0xFFFFFFFF, octets & 0xFFFFFFFF
    )


def pack_sdes_cname(ssrc: int, cname: str) -> bytes:
    text = cname.encode()[:255]
    chunk = struct.pack("!IBB", ssrc, 1, len(text)) + text
    chunk += b"\x00" * (4 - len(chunk) % 4)  # null item terminator + padding to 32 bits
    return _header(1, SDES, len(chunk) // 4) + chunk


def pack_nack(sender_ssrc: int, media_ssrc: int, lost: list[int]) -> bytes:
    """Generic NACK with one FCI per run of up to 17 sequence numbers (RFC 4585 6.2.1)."""
    fci = bytearray()
    seqs = sorted(set(lost), key=lambda s: (s - lost[0]) & 0xFFFF)
    i = 0
    while i < len(seqs):
        pid = seqs[i]
        blp = 0
        i += 1
        while i < len(seqs):
            d = (seqs[i] - pid) & 0xFFFF
            if 1 <= d <= 16:
                blp |= 1 << (d - 1)
                i += 1
            else:
                break
        fci += struct.pack("!HH", pid, blp)
    return _header(FMT_NACK, RTPFB, 2 + len(fci) // 4) + struct.pack("!II", sender_ssrc, media_ssrc) + bytes(fci)


def pack_pli(sender_ssrc: int, media_ssrc: int) -> bytes:
    return _header(FMT_PLI, PSFB, 2) + struct.pack("!II", sender_ssrc, media_ssrc)


def pack_fir(sender_ssrc: int, media_ssrc: int, seqnr: int) -> bytes:
    return _header(FMT_FIR, PSFB, 4) + struct.pack("!IIIB3x", sender_ssrc, 0, media_ssrc, seqnr & 0xFF)


def pack_remb(sender_ssrc: int, bitrate: int, ssrcs: list[int]) -> bytes:
    exp = 0
    mantissa = int(bitrate)
    while mantissa > 0x3FFFF:
        mantissa >>= 1
        exp += 1
    body = struct.pack("!II4sB", sender_ssrc, 0, b"REMB", len(ssrcs))
    body += bytes([(exp << 2) | (mantissa >> 16), (mantissa >> 8) & 0xFF, mantissa & 0xFF])
    body += b"".join(struct.pack("!I", s) for s in ssrcs)
    return _header(FMT_AFB, PSFB, len(body) // 4) + body
