"""The native per-copy path (media/_fastpath.c) against the Python one, on the wire.

Two subscribers of the same publisher, one forwarded by the native path (ConsumerCore.write,
SendCore.send_rtp/_send_now, sending straight on its socket) and one by the Python twins
(Consumer._write_py, WebRtcTransport._send_rtp_py/_send_now_py, uvloop/asyncio sendto),
with the same offsets, the same SRTP key and the same pacing. They are fed one packet
sequence that takes every branch: a keyframe switch onto a layer, temporal-layer dropping
and its late-packet ranges, reordering, a switch to another simulcast layer, RTP padding,
audio with its level, and a pacer that queues. What reaches each socket is decrypted and
must be byte for byte the same, and so must the slots' state and the send histories.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import struct
import time

import pytest
from pylibsrtp import Policy, Session

from media.consumer import Consumer
from media.fastpath import NATIVE
from media.producer import Producer
from media.rtp import URI_ABS_SEND_TIME, URI_AUDIO_LEVEL, URI_MID, ext_table
from media.srtp import SrtpContext
from media.transport import MediaSettings, WebRtcTransport

pytestmark = pytest.mark.skipif(not NATIVE, reason="native path not built (or HOINGHI_NATIVE=0)")

PATTERN = (0, 2, 1, 2)


class _Router:
    def transport_connected(self, t) -> None: ...
    def stream_started(self, s) -> None: ...


class PyConsumer(Consumer):
    write = Consumer._write_py


class PyTransport(WebRtcTransport):
    send_rtp = WebRtcTransport._send_rtp_py
    _send_now = WebRtcTransport._send_now_py
    _pace_drain = WebRtcTransport._pace_drain_py


def _vp8(seq: int, ts: int, ssrc: int, pid: int, tl0: int, tid: int, y: bool, start: bool, key: bool,
         marker: bool, body: bytes, pad: int = 0) -> bytes:
    ext = bytes([0xBE, 0xDE, 0x00, 0x01, (3 << 4) | 2, 1, 2, 3])  # abs-send-time (rewritten)
    b0 = 0x90 | (0x20 if pad else 0)
    header = struct.pack("!BBHII", b0, 96 | (0x80 if marker else 0), seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + ext
    desc = bytes([0x80 | (0x10 if start else 0), 0xE0, 0x80 | (pid >> 8), pid & 0xFF, tl0, (tid << 6) | (0x20 if y else 0)])
    payload = desc + bytes([0x00 if key and start else 0x01]) + body
    padding = (bytes(pad - 1) + bytes([pad])) if pad else b""
    return header + payload + padding


def _layer_packets(ssrc: int, frames: int, rng: random.Random, key_at: set[int]) -> list[tuple[int, bytes]]:
    """(tid, packet) for `frames` VP8 L1T3 frames of one simulcast layer."""
    out = []
    seq, pid, tl0 = rng.randrange(0x10000), rng.randrange(0x8000), rng.randrange(256)
    synced: set[int] = set()
    for f in range(frames):
        tid = 0 if f in key_at else PATTERN[f % 4]
        if tid == 0:
            tl0 = (tl0 + 1) & 0xFF
            synced = set()
        y = tid > 0 and tid not in synced
        synced.add(tid)
        count = rng.randint(1, 3)
        for k in range(count):
            body = bytes(rng.randrange(256) for _ in range(rng.randint(20, 900)))
            pad = rng.choice((0, 0, 0, 0, 17)) if k == count - 1 else 0
            out.append((tid, _vp8(seq, 3000 * f, ssrc, pid, tl0, tid, y, k == 0, f in key_at, k == count - 1, body, pad)))
            seq = (seq + 1) & 0xFFFF
        pid = (pid + 1) & 0x7FFF
    return out


def _opus(seq: int, ts: int, ssrc: int, level: int, rng: random.Random) -> bytes:
    ext = bytes([0xBE, 0xDE, 0x00, 0x01, (4 << 4) | 0, level, 0, 0])
    return struct.pack("!BBHII", 0x90, 111, seq, ts, ssrc) + ext + bytes(rng.randrange(256) for _ in range(60))


async def _subscriber(cls_t, cls_c, producer_v, producer_a, key: bytes, offsets: tuple, native: bool):
    loop = asyncio.get_running_loop()
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sink.setblocking(False)
    t = cls_t(_Router(), "sub", MediaSettings())
    t._tx = SrtpContext(Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND)))
    udp, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
    t._sendto = udp.sendto
    t._addr = sink.getsockname()
    if native:
        t._bind_direct(udp.get_extra_info("socket"))
        assert t.direct
    v = cls_c(t, "video", 0, "2", 0x1111, 96, 90000, 0x2222, 97, abs_send_time_id=3, transport_cc_id=5, nack=True)
    a = cls_c(t, "audio", 0, "3", 0x3333, 111, 48000, None, None, audio_level_id=2, transport_cc_id=5)
    for c, (seq_off, ts_off) in zip((v, a), offsets):
        c.seq_off, c.ts_off = seq_off, ts_off
    t.consumers["video"].append(v)
    t.consumers["audio"].append(a)
    t.set_pacing(3_000_000)  # 375 kB/s, bursts of 5 ms (1.9 kB): a keyframe's packets queue
    v.assign(producer_v)
    a.assign(producer_a)
    return t, v, a, sink, udp


@contextlib.asynccontextmanager
async def _paced_subscriber(native: bool):
    """A subscriber transport, native or Python, with a video and an audio slot on a local
    socket, for the pacer and probe tests: yields (transport, video slot, audio slot, sink,
    SRTP key)."""
    key = os.urandom(30)
    video = Producer(WebRtcTransport(_Router(), "pub", MediaSettings()), "video", "1", "video/vp8", 90000, 96, 97, set(), [])
    audio = Producer(WebRtcTransport(_Router(), "pub", MediaSettings()), "audio", "0", "audio/opus", 48000, 111, None, set(), [])
    cls_t, cls_c = (WebRtcTransport, Consumer) if native else (PyTransport, PyConsumer)
    t, v, a, sink, udp = await _subscriber(cls_t, cls_c, video, audio, key, ((0, 0), (0, 0)), native)
    try:
        yield t, v, a, sink, key
    finally:
        t._direct_unbind()
        udp.close()
        sink.close()


def _rtp(seq: int, size: int, pt: int = 96, ssrc: int = 0x1111) -> bytearray:
    """A plain RTP packet of `size` bytes."""
    return bytearray(struct.pack("!BBHII", 0x80, pt, seq, 0, ssrc) + bytes(size - 12))


def _drain(sink: socket.socket, key: bytes) -> list[bytes]:
    rx = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_INBOUND))
    out = []
    while True:
        try:
            data = sink.recv(4096)
        except BlockingIOError:
            return out
        out.append(rx.unprotect(data))


STATE = ("seq_off", "ts_off", "pid_off", "tl0_off", "last_seq", "last_ts", "last_pid", "last_tl0", "last_marker",
         "last_src", "_tl_gate", "_guard", "_switch_seq", "packets", "octets", "sent_any", "paused", "switches",
         "max_tid", "want_tid", "tl_dropped")


async def test_native_and_python_paths_put_the_same_bytes_on_the_wire():
    rng = random.Random(7)
    publisher = WebRtcTransport(_Router(), "pub", MediaSettings())
    publisher.ext_kinds = ext_table({URI_MID: 1, URI_ABS_SEND_TIME: 3, URI_AUDIO_LEVEL: 4})
    video = Producer(publisher, "video", "1", "video/vp8", 90000, 96, 97, {"nack", "nack pli"}, ["q", "h"])
    audio = Producer(publisher, "audio", "0", "audio/opus", 48000, 111, None, set(), [])
    q, h = video.streams
    q.ssrc, h.ssrc, audio.streams[0].ssrc = 0xA1, 0xA2, 0xA3
    for s in (q, h, audio.streams[0]):
        publisher._media_streams[s.ssrc] = s
    publisher.producers["video"] = video
    publisher.producers["audio"] = audio
    key = os.urandom(30)
    offsets = ((rng.randrange(0x10000), rng.randrange(1 << 32)), (rng.randrange(0x10000), rng.randrange(1 << 32)))
    nat = await _subscriber(WebRtcTransport, Consumer, video, audio, key, offsets, native=True)
    py = await _subscriber(PyTransport, PyConsumer, video, audio, key, offsets, native=False)
    assert type(nat[1]).write is not type(py[1]).write

    lq = _layer_packets(0xA1, 80, rng, {0, 40})
    lh = _layer_packets(0xA2, 80, rng, {0, 50})
    aseq, ats = rng.randrange(0x10000), rng.randrange(1 << 32)
    feed: list[bytes] = []
    for i in range(80 * 3):
        if i < len(lq):
            feed.append(lq[i][1])
        if i < len(lh):
            feed.append(lh[i][1])
        if i % 3 == 0:
            feed.append(_opus(aseq, ats, 0xA3, rng.randrange(128), rng))
            aseq, ats = (aseq + 1) & 0xFFFF, (ats + 960) & 0xFFFFFFFF
    # reordering: a few packets come late (as an upstream retransmission would)
    for _ in range(12):
        i = rng.randrange(10, len(feed) - 8)
        feed.insert(i + rng.randint(2, 6), feed.pop(i))

    for n, data in enumerate(feed):
        if n == len(feed) // 4:
            for _t, v, *_ in (nat, py):
                v.set_temporal(1)  # drop TL2: the temporal filter and its late-packet ranges
        if n == len(feed) // 2:
            for _t, v, *_ in (nat, py):
                v.select(h, tid=3)  # up to the other layer at its next keyframe
        publisher._on_rtp(data)
        if n % 25 == 0:
            await asyncio.sleep(0.01)  # the pacer drains in between
    for _ in range(100):
        if not nat[0]._pace_queue and not py[0]._pace_queue:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.05)

    got_nat = _drain(nat[3], key)
    got_py = _drain(py[3], key)
    assert len(got_py) > 150
    # Audio is never queued behind video (it goes ahead of the pacer's queue), so how the two
    # kinds interleave on the wire, and so the transport-wide seqs written into them, follow
    # the pacer's timing: the bytes are compared stream by stream with that seq zeroed, and
    # each path must have used every transport-wide seq once.
    tcc = {0x1111: nat[1].tcc_off, 0x2222: nat[1].tcc_off, 0x3333: nat[2].tcc_off}

    def plain(p: bytes) -> bytes:
        off = tcc[struct.unpack_from("!I", p, 8)[0]]
        return p[:off] + b"\0\0" + p[off + 2 :]

    def by_stream(got: list[bytes]) -> dict[int, list[bytes]]:
        out: dict[int, list[bytes]] = {}
        for p in got:
            out.setdefault(struct.unpack_from("!I", p, 8)[0], []).append(plain(p))
        return out

    assert by_stream(got_nat) == by_stream(got_py)
    for got in (got_nat, got_py):
        assert sorted(struct.unpack_from("!H", p, tcc[struct.unpack_from("!I", p, 8)[0]])[0] for p in got) == \
            list(range(len(got)))
    for a, b in ((nat[1], py[1]), (nat[2], py[2])):
        assert {k: getattr(a, k) for k in STATE} == {k: getattr(b, k) for k in STATE}
        if a.history is not None:
            assert [plain(bytes(p)) if p is not None else None for p in a.history] == \
                   [plain(bytes(p)) if p is not None else None for p in b.history]
    assert nat[1].switches >= 1 and nat[1].tl_dropped > 0  # the slow paths were taken
    tn, tp = nat[0], py[0]
    assert (tn.packets_out, tn.bytes_out, tn.send_errors) == (tp.packets_out, tp.bytes_out, tp.send_errors)
    assert tn.packets_out == len(got_nat)
    hn, hp = tn.twcc_history, tp.twcc_history
    assert hn.seq == hp.seq == len(got_nat)
    assert sorted(hn.sizes[: hn.seq]) == sorted(hp.sizes[: hp.seq])
    assert list(hn.seqs[: hn.seq]) == list(range(hn.seq))
    assert sum(tn.pace_waited) > 0 and sum(tp.pace_waited) > 0  # the pacer queued on both
    for t, _v, _a, sink, udp in (nat, py):
        t._direct_unbind()
        udp.close()
        sink.close()


async def test_a_closed_socket_is_never_written_after_unbind():
    """The native path sends on its own dup of the ICE socket's descriptor: closing the
    original (aioice does, at teardown) cannot make it write into a reused descriptor, and
    unbinding closes the dup."""
    loop = asyncio.get_running_loop()
    t = WebRtcTransport(_Router(), "sub", MediaSettings())
    t._tx = SrtpContext(Session(Policy(key=os.urandom(30), ssrc_type=Policy.SSRC_ANY_OUTBOUND)))
    udp, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setblocking(False)
    t._sendto = udp.sendto
    t._addr = sink.getsockname()
    t._bind_direct(udp.get_extra_info("socket"))
    def packet(seq: int) -> bytearray:  # (libsrtp refuses to protect one seq twice)
        return bytearray(struct.pack("!BBHII", 0x80, 96, seq, 1, 0x55) + bytes(100))

    t.send_rtp(packet(1))
    udp.close()  # the original descriptor goes; the dup still sends from the same port
    await asyncio.sleep(0)
    t.send_rtp(packet(2))
    assert len(_drain_raw(sink)) == 2
    await t.close()
    assert not t.direct
    t.send_rtp(packet(3))  # not bound, no sendto: nothing goes out, nothing raises
    assert _drain_raw(sink) == []
    assert t.packets_out == 2
    sink.close()


def _drain_raw(sink: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sink.recv(4096))
        except BlockingIOError:
            return out


def test_offsets_outside_the_packet_raise_and_never_write_out_of_bounds():
    """The parser never produces them, but the native rewrite must not trust that: every
    offset it writes through is checked, and a bad one is an exception (logged and counted
    by the transport), as an IndexError is in Python."""
    from media.rtp import RtpInfo

    class _Sent:
        def __init__(self) -> None:
            self.packets: list[bytes] = []

        def send_rtp(self, packet: bytearray, tcc_off: int = 0, urgent: bool = False) -> None:
            self.packets.append(bytes(packet))

    class _Stream:
        layer = 0

    sent = _Sent()
    c = Consumer(sent, "video", 0, "0", 0xABCD, 100, 90000, None, None)  # type: ignore[arg-type]
    stream = _Stream()
    c.source = stream  # type: ignore[assignment]
    data = struct.pack("!BBHII", 0x80, 96, 1, 3000, 0x1234) + bytes([0x90, 0x80, 0x85, 0x01, 0x00, 1, 2])
    for field, value, error in (
        ("vp8_pid_off", len(data), IndexError),
        ("vp8_pid_off", len(data) - 1, IndexError),  # a wide PictureID needs two bytes
        ("vp8_tl0_off", len(data) + 5, IndexError),
        ("payload_offset", len(data) + 1, ValueError),
    ):
        info = RtpInfo(data)
        info.ssrc, info.seq, info.ts, info.pt, info.marker, info.padding = 0x1234, 1, 3000, 96, 0, 0
        info.payload_offset = 12
        info.vp8_pid_off, info.vp8_pid_wide, info.vp8_tl0_off = 14, True, -1
        setattr(info, field, value)
        with pytest.raises(error):
            c.write(info, stream, 0.0)  # type: ignore[arg-type]
    assert sent.packets == []
    info = RtpInfo(data)  # and a good one still goes out
    info.ssrc, info.seq, info.ts, info.pt, info.marker, info.padding = 0x1234, 1, 3000, 96, 0, 0
    info.payload_offset, info.vp8_pid_off, info.vp8_pid_wide = 12, 14, True
    c.write(info, stream, 0.0)  # type: ignore[arg-type]
    assert len(sent.packets) == 1


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
async def test_the_pacer_lets_one_packet_out_at_a_time_on_a_slow_link_and_never_holds_a_large_one(native: bool):
    """At 300 kbit/s a packet leaves when the bucket is out of debt, whatever its size, and
    the bucket saves only 300 bytes while idle. With a full-size packet's worth saved (1.5 kB),
    a frame's two packets left 2-20 ms apart into a link that takes 30 ms for one: a queue of
    up to 40 ms that GCC read as over-use many times a minute (3 kB before: 80 ms at once)."""
    async with _paced_subscriber(native) as (t, _v, _a, sink, key):
        t.set_pacing(300_000)
        assert t._pace_burst == WebRtcTransport.PACE_BURST_MIN == 300.0

        await asyncio.sleep(0.1)  # the bucket fills (to 300 bytes)
        t.send_rtp(_rtp(1, 1900), 0)  # far over the bucket: out at once, tokens in debt
        assert not t._pace_queue and t._pace_tokens < 0
        for k in range(3):
            t.send_rtp(_rtp(2 + k, 1200), 0)
        assert len(t._pace_queue) == 3  # nothing more until the debt is paid
        for _ in range(200):
            if not t._pace_queue:
                break
            await asyncio.sleep(0.01)
        assert not t._pace_queue
        await asyncio.sleep(0.1)  # saved again: one 700-byte packet goes, the next waits for its bytes
        sent0 = t.packets_out  # (with 1.5 kB saved, two of them left together)
        t0 = time.monotonic()
        for k in range(3):
            t.send_rtp(_rtp(5 + k, 700), 0)
        assert len(t._pace_queue) == 2
        while len(t._pace_queue) == 2:
            await asyncio.sleep(0.001)
        # the second left no sooner than the first's bytes less the savings allow at 300 kbit/s
        assert time.monotonic() - t0 >= (700 + 38 - 300) * 8 / 300_000 - 0.002
        assert t.packets_out == sent0 + 2
        for _ in range(200):
            if not t._pace_queue:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.02)
        rx = SrtpContext(Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_INBOUND)))  # pylibsrtp's own refuses > ~1356 B
        got = []
        while True:
            try:
                got.append(bytes(rx.unprotect(sink.recv(4096))))
            except BlockingIOError:
                break
        assert [struct.unpack_from("!H", p, 2)[0] for p in got] == list(range(1, 8))
        assert t.pace_dropped == 0 and t.packets_out == 7


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
async def test_a_late_drain_tick_catches_up_what_the_queue_waited_for(native: bool):
    """The queue has waited all along when a drain tick fires late: it gets the tokens of the
    lateness (up to PACE_LATE_S), not only the 5 ms the bucket saves while idle. Without, a
    busy loop paced 800 kbit/s at ~660 with 60-77 packets standing in the queue."""
    async with _paced_subscriber(native) as (t, _v, _a, _sink, _key):
        t.set_pacing(800_000)
        rate = 800_000 / 8

        await asyncio.sleep(0.05)
        for k in range(40):  # 40 kB: the first goes, the rest queue
            t.send_rtp(_rtp(1 + k, 1000), 0)
        sent0 = t.packets_out
        t._pace_tokens = 0.0
        t._pace_time = time.monotonic() - 0.03  # the tick comes 30 ms after the debt was paid
        t._pace_drain()
        # 30 ms at 800 kbit/s is ~3 kB: three packets (one would go on 5 ms of savings)
        assert t.packets_out - sent0 >= 3, t.packets_out - sent0
        # ... and never more than PACE_LATE_S of the rate at once
        t._pace_time = time.monotonic() - 1.0
        sent1 = t.packets_out
        t._pace_drain()
        assert t.packets_out - sent1 <= WebRtcTransport.PACE_LATE_S * rate / (1000 + 38) + 1.5  # (+ the one into debt)


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
async def test_audio_goes_ahead_of_the_video_queued_in_the_pacer(native: bool):
    """An audio slot's packet is never queued behind video: it goes at once and its bytes are
    owed (libwebrtc does not pace audio either). Queued, a 300 kbit/s site's voice waited
    behind every keyframe in the pacer."""
    async with _paced_subscriber(native) as (t, _v, _a, _sink, _key):
        t.set_pacing(300_000)

        for k in range(8):  # a keyframe's worth of video: one goes, seven queue (~0.2 s at 300 kbit/s)
            t.send_rtp(_rtp(1 + k, 1000), 0)
        assert len(t._pace_queue) == 7
        tokens = t._pace_tokens
        out = t.packets_out
        t.send_rtp(_rtp(1, 120, 111, 0x2222), 0, True)  # audio
        assert t.packets_out == out + 1 and len(t._pace_queue) == 7  # out at once, the video still queued
        assert t._pace_tokens < tokens  # ... and its bytes owed: the rate holds
        # video keeps its place: sent with the flag off it queues like the rest
        t.send_rtp(_rtp(9, 120), 0, False)
        assert len(t._pace_queue) == 8


async def test_a_probe_packet_is_no_larger_than_what_the_probe_still_owes():
    """At 350 kbit/s a probe owes ~440 bytes a 10 ms tick; a 1200-byte RTX copy is three ticks,
    and whichever third of the cluster such copies fell in read too fast or too slow. The
    probe takes the largest recent packet that fits, else padding of that size."""
    async with _paced_subscriber(True) as (t, v, _a, _sink, _key):
        assert v.tcc_off and v.history is not None
        mask = len(v.history) - 1
        v.sent_any = True
        v.last_seq = 10
        v.history[10 & mask] = bytearray(v._template) + bytes(1100)
        v.history[9 & mask] = bytearray(v._template) + bytes(380)
        now = time.monotonic()
        _, size = t.send_probe_packet(now, 500)
        assert size <= 500, size  # the 380-byte one
        _, size = t.send_probe_packet(now, 1500)
        assert size > 1100, size  # room for the big one
        v.history[9 & mask] = None
        _, size = t.send_probe_packet(now, 200)  # nothing recent fits: padding of that size
        assert size <= 200, size
