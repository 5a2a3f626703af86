"""Temporal-layer forwarding (VP8 L1T3, as Chrome sends every simulcast layer).

A slot that forwards only some temporal ids must still look like one stream to the
receiver: sequence numbers without holes (a hole is a loss to NACK), PictureIDs that go up
by one per forwarded frame, TL0PICIDX untouched, whole frames only, and a packet the
publisher's retransmission brings late must land exactly in the hole its loss left, or be
dropped with its frame. The Consumer under test is the real one; only its transport is a
recorder of what would go out.
"""

from __future__ import annotations

import random
import struct

from media import vp8
from media.consumer import Consumer
from media.rtp import RtpInfo, ext_table, parse_rtp

PATTERN = (0, 2, 1, 2)  # libwebrtc's 3-layer pattern: TL0, TL2, TL1, TL2, ...
SSRC = 0x1234


class _Sent:
    """Stands in for the WebRtcTransport: keeps every packet the slot sends."""

    def __init__(self) -> None:
        self.packets: list[bytes] = []

    def send_rtp(self, packet: bytearray, tcc_off: int = 0, urgent: bool = False) -> None:
        self.packets.append(bytes(packet))


class _Stream:
    layer = 0

    def request_keyframe(self, now: float) -> None:
        pass


def _frames(n: int, rng: random.Random, key_every: int = 0) -> list[list[tuple[int, bytes]]]:
    """n VP8 frames as the publisher packetizes them: [(tid, rtp packet), ...] per frame.
    Layer sync (Y) is set on the first TL1 and TL2 frame after each TL0 frame."""
    frames = []
    seq = rng.randrange(0x10000)
    pid = rng.randrange(0x8000)
    tl0 = rng.randrange(256)
    synced: set[int] = set()
    for f in range(n):
        tid = PATTERN[f % 4]
        key = f == 0 or (key_every and f % key_every == 0)
        if tid == 0:
            tl0 = (tl0 + 1) & 0xFF
            synced = set()
        y = tid > 0 and tid not in synced
        synced.add(tid)
        packets = []
        count = rng.randint(1, 4)
        for k in range(count):
            desc = bytes([0x80 | (0x10 if k == 0 else 0), 0xE0, 0x80 | (pid >> 8), pid & 0xFF, tl0, (tid << 6) | (0x20 if y else 0)])
            body = bytes([0x00 if key and k == 0 else 0x01]) + bytes(rng.randrange(256) for _ in range(20))
            header = struct.pack("!BBHII", 0x80, 96 | (0x80 if k == count - 1 else 0), seq, 3000 * f, SSRC)
            packets.append((tid, header + desc + body))
            seq = (seq + 1) & 0xFFFF
        pid = (pid + 1) & 0x7FFF
        frames.append(packets)
    return frames


def _info(data: bytes) -> RtpInfo:
    info = parse_rtp(data, ext_table({}))
    vp8.parse_descriptor(info)
    info.abs24 = 0
    info.payload = memoryview(info.data)[info.payload_offset :]
    return info


def _slot() -> tuple[Consumer, _Sent, _Stream]:
    sent = _Sent()
    c = Consumer(sent, "video", 0, "0", 0xABCD, 100, 90000, None, None)  # type: ignore[arg-type]
    stream = _Stream()
    c.source = stream  # type: ignore[assignment]
    return c, sent, stream


def _out(data: bytes) -> tuple[int, int, int, int, bool]:
    """(seq, pid, tl0, tid, frame start) of a forwarded packet."""
    info = _info(data)
    d = info.data
    o = info.vp8_pid_off
    return info.seq, vp8.read_picture_id(d, o, True), d[info.vp8_tl0_off], info.vp8_tid, info.vp8_start


def _check_stream(sent: list[bytes], allowed_holes: int = 0) -> list[tuple[int, int, int, int, bool]]:
    """Forwarded packets in seq order: contiguous seqs, PictureID +1 per frame, whole frames."""
    base = sent_base(sent)
    outs = sorted((_out(p) for p in sent), key=lambda o: (o[0] - base) & 0xFFFF)
    seqs = [o[0] for o in outs]
    assert len(set(seqs)) == len(seqs), "a sequence number was sent twice"
    holes = sum(((b - a) & 0xFFFF) - 1 for a, b in zip(seqs, seqs[1:]))
    assert holes == allowed_holes, seqs
    for a, b in zip(outs, outs[1:]):
        if b[4]:  # a new frame: PictureID +1, the previous frame ended (marker checked below)
            assert (b[1] - a[1]) & 0x7FFF == 1, (a, b)
        else:
            assert b[1] == a[1] and b[3] == a[3], (a, b)
    return outs


def sent_base(sent: list[bytes]) -> int:
    return _info(sent[0]).seq


def test_base_layer_only_is_one_gapless_stream():
    rng = random.Random(1)
    c, sent, stream = _slot()
    c.set_temporal(0)
    frames = _frames(40, rng)
    for packets in frames:
        for _tid, data in packets:
            c.write(_info(data), stream, 0.0)  # type: ignore[arg-type]
    outs = _check_stream(sent.packets)
    assert {o[3] for o in outs} == {0}
    assert sum(1 for o in outs if o[4]) == 10  # every 4th frame
    tl0s = [o[2] for o in outs if o[4]]
    assert all((b - a) & 0xFF == 1 for a, b in zip(tl0s, tl0s[1:]))  # TL0PICIDX untouched
    assert c.tl_dropped == sum(len(p) for p in frames) - len(sent.packets)


def test_down_and_up_at_safe_frames_only():
    rng = random.Random(2)
    c, sent, stream = _slot()
    frames = _frames(64, rng)
    forwarded_tids: list[list[int]] = []
    for f, packets in enumerate(frames):
        if f == 9:
            c.set_temporal(1)  # mid-frame-sequence: applies from the next frame start
        if f == 21:
            c.set_temporal(0)
        if f == 37:
            c.set_temporal(3)  # up: only at a layer-sync frame
        n = len(sent.packets)
        for k, (_tid, data) in enumerate(packets):
            c.write(_info(data), stream, 0.0)  # type: ignore[arg-type]
            if f == 9 and k == 0:
                c.set_temporal(1)  # a change pending mid-frame must not cut this frame
        forwarded_tids.append([_out(p)[3] for p in sent.packets[n:]])
    _check_stream(sent.packets)
    for f, tids in enumerate(forwarded_tids):
        assert len(tids) in (0, len(frames[f])), (f, tids)  # whole frames only
        tid = PATTERN[f % 4]
        if 10 <= f < 21:
            assert (tid <= 1) == bool(tids), f
        if 22 <= f < 37:
            assert (tid == 0) == bool(tids), f
        if f >= 41:
            assert tids, f
    # the first TL2 frame forwarded after going up is a layer-sync frame
    first_up = next(f for f in range(37, 64) if forwarded_tids[f] and PATTERN[f % 4] == 2)
    assert first_up % 4 == 1


def test_late_packets_fill_their_own_hole_or_go_with_their_frame():
    for seed in range(30):
        rng = random.Random(100 + seed)
        c, sent, stream = _slot()
        c.set_temporal(1)
        frames = _frames(48, rng)
        flat = [(f, tid, data) for f, packets in enumerate(frames) for tid, data in packets]
        held = []  # upstream loss: these come back late (RTX recovered), a few packets later
        for i, (f, tid, data) in enumerate(flat):
            if i > 2 and rng.random() < 0.12:
                held.append((i + rng.randint(1, 6), data))
                continue
            c.write(_info(data), stream, 0.0)  # type: ignore[arg-type]
            for due, late in [h for h in held if h[0] <= i]:
                held.remove((due, late))
                c.write(_info(late), stream, 0.0)  # type: ignore[arg-type]
        for _due, late in held:
            c.write(_info(late), stream, 0.0)  # type: ignore[arg-type]
        # one gapless stream, each sequence number once
        base = _info(sent.packets[0]).seq
        seqs = sorted((_info(p).seq - base) & 0xFFFF for p in sent.packets)
        assert seqs == list(range(len(seqs))), (seed, seqs)
        # every packet of the base and middle layers, once, in source order, PictureIDs +1 per frame
        media = [p for p in sent.packets if not p[0] & 0x20]
        by_body = {bytes(_info(p).payload[6:]): p for p in media}
        kept = [data for packets in frames for tid, data in packets if tid <= 1]
        outs = [by_body.get(bytes(_info(d).payload[6:])) for d in kept]
        assert all(o is not None for o in outs), seed
        out_seqs = [(_info(o).seq - base) & 0xFFFF for o in outs]
        assert out_seqs == sorted(out_seqs), seed
        # complete frames (start .. marker, consecutive seqs, one PictureID) in seq order:
        # PictureIDs +1 each, so the receiver never waits for a frame that will not come
        ordered = sorted(media, key=lambda p: (_info(p).seq - base) & 0xFFFF)
        complete, run = [], []
        for p in ordered:
            seq, pid, _tl0, _tid, start = _out(p)
            if start:
                run = [(seq, pid)]
            elif run and seq == (run[-1][0] + 1) & 0xFFFF and pid == run[-1][1]:
                run.append((seq, pid))
            else:
                run = []
            if run and _info(p).marker:
                complete.append(pid)
                run = []
        steps = [(b - a) & 0x7FFF for a, b in zip(complete, complete[1:])]
        assert all(s == 1 for s in steps), (seed, [(i, s) for i, s in enumerate(steps) if s != 1])
        # top-layer packets go out only late, into the hole their loss left
        assert len(media) - len(kept) <= sum(1 for _f, tid, _d in flat if tid == 2) * 0.15, seed


class _Layer(_Stream):
    def __init__(self, layer: int) -> None:
        self.layer = layer
        self.sinks: list = []


async def test_a_congestion_drop_takes_the_old_layers_backlog_back_from_the_pacer():
    """Behind a link that just shrank, the pacer holds up to a second of the old layer; a slot
    dropped for a lower layer takes its packets back (the real transport's pacer), and the
    lower layer's keyframe follows what really left, one seq skipped (a frame cut short)."""
    from media.transport import MediaSettings, WebRtcTransport

    t = WebRtcTransport(None, "site", MediaSettings())  # type: ignore[arg-type]
    try:
        c = Consumer(t, "video", 0, "0", 0xABCD, 100, 90000, None, None)
        hi, lo = _Layer(2), _Layer(0)
        c.source = hi  # type: ignore[assignment]
        hi.sinks.append(c)
        t.set_pacing(80_000)  # 12.5 kB/s: one packet goes out, the rest waits
        rng = random.Random(3)
        for packets in _frames(30, rng):
            for _tid, data in packets:
                c.write(_info(data), hi, 0.0)  # type: ignore[arg-type]
        queued = [bytes(p) for p, _, _ in t._pace_queue]
        assert len(queued) > 20
        first_queued = struct.unpack("!H", queued[0][2:4])[0]
        packets_before = c.packets
        c.select(lo, drop_current=True, tid=3)  # type: ignore[arg-type]
        assert not t._pace_queue and t._pace_queued_bytes == 0
        assert c.unsent == len(queued) and c.packets == packets_before - len(queued)
        # what the receiver NACKs of the old layer (sent and lost, or never sent) finds nothing
        gone = (first_queued - 3) & 0xFFFF  # one that left before the link filled
        c.on_nack([gone] + [struct.unpack("!H", p[2:4])[0] for p in queued[:5]])
        assert c.retransmits == 0 and not t._pace_queue
        # the lower layer's keyframe continues after what left, skipping one seq
        key = _frames(1, random.Random(4))[0]
        for _tid, data in key:
            c.write(_info(data), lo, 0.0)  # type: ignore[arg-type]
        assert c.source is lo
        last = t._pace_queue[-1][0] if t._pace_queue else None
        assert last is not None
        firsts = [struct.unpack("!H", bytes(p)[2:4])[0] for p, _, _ in t._pace_queue]
        assert firsts[0] == (first_queued + 1) & 0xFFFF, (first_queued, firsts)
    finally:
        await t.pc.close()


async def test_no_retransmission_behind_a_full_pacer_and_no_second_copy_while_the_first_waits():
    """At 2 Mbit/s the pacer's queue sat at its 1 s cap: every packet it dropped was NACKed,
    each copy queued behind a second of media and NACKed again 50 ms later, up to 4 times, and
    the copies kept the queue full (8 freezes in 30 s). Behind more than RTX_MAX_BACKLOG_S a
    NACK is refused; under it, a packet is not copied again while its first copy may still
    be waiting in the queue."""
    from media.consumer import RESEND_GUARD, RTX_MAX_BACKLOG_S
    from media.transport import MediaSettings, WebRtcTransport

    t = WebRtcTransport(None, "site", MediaSettings())  # type: ignore[arg-type]
    try:
        c = Consumer(t, "video", 0, "0", 0xABCD, 100, 90000, None, None)
        src = _Layer(0)
        c.source = src  # type: ignore[assignment]
        src.sinks.append(c)
        rate_bps = 100_000
        t.set_pacing(rate_bps)
        rng = random.Random(5)
        for packets in _frames(8, rng):
            for _tid, data in packets:
                c.write(_info(data), src, 0.0)  # type: ignore[arg-type]
        sent_seqs = [struct.unpack("!H", bytes(p)[2:4])[0] for p in c.history if p is not None]
        queued_bytes = t.pace_queued_bytes()
        backlog_s = queued_bytes * 8 / rate_bps
        assert RESEND_GUARD < backlog_s < RTX_MAX_BACKLOG_S, backlog_s  # short enough to resend
        n_queued = len(t._pace_queue)
        c.on_nack(sent_seqs[:2])
        assert c.retransmits == 2 and len(t._pace_queue) == n_queued + 2
        for seq in sent_seqs[:2]:
            c._resent_at[seq & (len(c._resent_at) - 1)] -= RESEND_GUARD + 0.01  # as if 60 ms had passed
        c.on_nack(sent_seqs[:2])  # past the 50 ms guard, but the first copies may still be queued
        assert c.retransmits == 2 and c.rtx_refused == 0
        # a pacer holding more than RTX_MAX_BACKLOG_S: nothing is resent, and it is counted
        t._pace_queued_bytes = int(rate_bps / 8 * (RTX_MAX_BACKLOG_S + 0.1))
        c.on_nack(sent_seqs[2:5])
        assert c.retransmits == 2 and c.rtx_refused == 3
    finally:
        await t.pc.close()


async def test_a_paused_slot_takes_its_queued_packets_back_from_the_pacer():
    """Thumbnails paused at a cap with their packets still in the pacer held the link for
    ~2 s at the cut estimate, and the stage's lower layer waited behind them. Pausing takes
    the slot's packets back (as a congestion drop does): the queue keeps only other slots'."""
    from media.transport import MediaSettings, WebRtcTransport

    t = WebRtcTransport(None, "site", MediaSettings())  # type: ignore[arg-type]
    try:
        thumb = Consumer(t, "video", 1, "1", 0xAAAA, 100, 90000, None, None)
        stage = Consumer(t, "video", 0, "0", 0xBBBB, 100, 90000, None, None)
        a, b = _Layer(0), _Layer(0)
        thumb.source, stage.source = a, b  # type: ignore[assignment]
        a.sinks.append(thumb)
        b.sinks.append(stage)
        t.set_pacing(80_000)  # one packet goes out, the rest waits
        for c, layer, seed in ((thumb, a, 1), (stage, b, 2)):
            for packets in _frames(10, random.Random(seed)):
                for _tid, data in packets:
                    c.write(_info(data), layer, 0.0)  # type: ignore[arg-type]
        ssrcs = lambda: {bytes(p)[8:12] for p, _, _ in t._pace_queue}  # noqa: E731
        assert ssrcs() == {(0xAAAA).to_bytes(4, "big"), (0xBBBB).to_bytes(4, "big")}
        thumb.pause()
        assert ssrcs() == {(0xBBBB).to_bytes(4, "big")}
        assert t._pace_queued_bytes == sum(len(p) for p, _, _ in t._pace_queue)
    finally:
        await t.pc.close()
