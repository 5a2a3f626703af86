"""Sending pre-encoded media (loadtest/media_source.py) from a raw peer, the way a browser does.

`SimulcastSource` sends one site's VP8 layers from the shared cache: per packet it copies the
cached payload behind a per-layer header template, writes seq/ts/PictureID/TL0PICIDX/M and
abs-send-time in place, keeps the packet for NACK, and protects it. Each layer has its own
SSRC and RTX SSRC (as a browser's simulcast), carries mid/rid extensions on its first
packets (repaired-rid on RTX), is paced at 2.5x its bitrate (libwebrtc's pacing factor,
so a keyframe is spread over a few tens of ms rather than sent in one burst), answers
PLI/FIR with a keyframe (switching to the encoding phase whose keyframe comes first, within
`key_step` frames), answers NACK with RTX, and stops/resumes on `publish_layers`.

`OpusLoopSource` sends 20 ms Opus packets with their real RFC 6464 level, speech or
silence by a `TalkSchedule`. `MediaPacer` drives every source of the process from one task
(5 ms ticks), so hundreds of sites cost one timer.

`munge_simulcast_offer` turns aiortc's single-SSRC video m-section into what Chrome offers
for simulcast: a=rid q/h/f send, a=simulcast:send, the rid/repaired-rid extmaps, no a=ssrc.
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
import time
from collections import deque
from typing import TYPE_CHECKING, Callable, Optional

from media import rtcp
from media.rtp import URI_RID, URI_RRID

from .media_source import CLOCKS, FrameClock, LayerMedia, SyntheticMedia, TalkSchedule

if TYPE_CHECKING:
    from .rawpeer import RawTransport

logger = logging.getLogger(__name__)

PACE_FACTOR = 2.5
SDES_PACKETS = 100  # packets per SSRC that carry mid/rid (Chrome stops once they are acknowledged)
HISTORY = 1024
RID_EXT_ID = 10
RRID_EXT_ID = 11
TICK = 0.005
SEND_LAG_BINS = 500  # send_lag_hist: 1 ms bins, the last one 500 ms or more
#: how long after its capture time each frame's first packet left, every layer of every site
#: of this process: frames sent late keep their capture-time RTP timestamps, so this is what
#: the generator itself adds to the latency its sites measure (a browser's pacer is not
#: starved by 80 other sites in its process)
send_lag_hist = [0] * (SEND_LAG_BINS + 1)
SR_INTERVAL = 1.0
VOICE_LEVEL = 50  # -dBov louder than this sets the V (voice activity) bit

_pack_seq_ts = struct.Struct("!HI").pack_into


def _ext_block(items: list[tuple[int, bytes]]) -> tuple[bytes, dict[int, int]]:
    """RFC 8285 one-byte header extension block; returns it and each id's value offset."""
    body = bytearray()
    offsets = {}
    for ext_id, value in items:
        body.append((ext_id << 4) | (len(value) - 1))
        offsets[ext_id] = 4 + len(body)
        body += value
    while len(body) % 4:
        body.append(0)
    return b"\xbe\xde" + struct.pack("!H", len(body) // 4) + bytes(body), offsets


def _template(pt: int, ssrc: int, items: list[tuple[int, bytes]]) -> tuple[bytearray, dict[int, int]]:
    hdr = bytearray(12)
    hdr[0] = 0x80
    hdr[1] = pt
    hdr[8:12] = ssrc.to_bytes(4, "big")
    offsets: dict[int, int] = {}
    if items:
        block, rel = _ext_block(items)
        hdr[0] |= 0x10
        hdr += block
        offsets = {k: 12 + v for k, v in rel.items()}
    return hdr, offsets


def _abs_send_time() -> int:
    return int(time.time() * 262144.0) & 0xFFFFFF


class LayerSender:
    """One simulcast layer (one SSRC + its RTX SSRC) of one site."""

    def __init__(
        self,
        source: "SimulcastSource",
        media: LayerMedia,
        ssrc: int,
        rtx_ssrc: Optional[int],
        rid: Optional[str],
    ) -> None:
        self.source = source
        self.media = media
        self.rid = rid
        self.ssrc = ssrc
        self.rtx_ssrc = rtx_ssrc
        s = source
        sdes: list[tuple[int, bytes]] = []
        if s.mid_id:
            sdes.append((s.mid_id, s.mid.encode()))
        if rid and s.rid_id:
            sdes.append((s.rid_id, rid.encode()))
        plain = [(s.abs_id, b"\0\0\0")] if s.abs_id else []
        self._tmpl_sdes, off_sdes = _template(s.payload_type, ssrc, plain + sdes)
        self._tmpl, off = _template(s.payload_type, ssrc, plain)
        self._abs = off.get(s.abs_id, 0)
        assert self._abs == off_sdes.get(s.abs_id, 0)
        self._rtx_tmpl: Optional[bytearray] = None
        if rtx_ssrc is not None and s.rtx_payload_type is not None:
            rtx_items = [(s.mid_id, s.mid.encode())] if s.mid_id else []
            if rid and s.rrid_id:
                rtx_items.append((s.rrid_id, rid.encode()))
            self._rtx_tmpl, _ = _template(s.rtx_payload_type, rtx_ssrc, rtx_items)
        self.seq = random.getrandbits(16)
        self.rtx_seq = random.getrandbits(16)
        self.pid = random.getrandbits(15)
        self.tl0 = random.getrandbits(8)
        self.phase = 0
        self.active = True
        self.need_key = True  # the first frame sent is a keyframe
        self.wait_for_key = True  # send nothing until that keyframe (start, resume)
        self.sdes_left = SDES_PACKETS
        self.history: list[Optional[bytearray]] = [None] * HISTORY
        self.backlog: deque = deque()
        self.rate = media.spec.bitrate * PACE_FACTOR / 8  # bytes/s
        self.budget = 0.0
        self.budget_time = 0.0
        self.last_ts = 0
        # counters
        self.packets = 0
        self.bytes = 0
        self.frames = 0
        self.keyframes = 0
        self.keyframe_requests = 0
        self.key_delays: list[float] = []  # s from a PLI/FIR to the keyframe being queued
        self.key_delay_frames: list[int] = []  # the same in frames (at most the media's key_step)
        self._key_asked = 0.0
        self._key_asked_frame = 0
        self.nacked = 0
        self.retransmitted = 0
        self.dropped = 0  # packets dropped from the backlog on stop
        self.frame_marks: deque = deque()  # (first packet of a queued frame, its capture time)

    # ---------------------------------------------------------------- frames

    def queue_frame(self, n: int, idx: int, ts: int, now: float) -> None:
        """Queue absolute frame `n` (loop index `idx`); the pacer sends it."""
        if not self.active:
            return
        m = self.media
        if self.need_key:
            phases = m.key_phases[idx]
            if phases:
                if self.phase not in phases:
                    self.phase = phases[0]
                self.need_key = False
                self.wait_for_key = False
                if self._key_asked:
                    self.key_delays.append(now - self._key_asked)
                    self.key_delay_frames.append(n - self._key_asked_frame)
                    self._key_asked = 0.0
            elif self.wait_for_key:
                return
        frame = m.phases[self.phase][idx]
        if frame.key:
            self.keyframes += 1
        s = self.source
        pt = s.payload_type
        pid_hi = 0x80 | (self.pid >> 8)
        pid_lo = self.pid & 0xFF
        tl0 = self.tl0
        if frame.tid == 0:
            # TL0PICIDX counts base-layer frames: a receiver thinned to TID 0 sees it step by one
            tl0 = self.tl0 = (tl0 + 1) & 0xFF
        payloads = frame.payloads
        last = len(payloads) - 1
        history = self.history
        backlog = self.backlog
        first = len(backlog)
        for k, payload in enumerate(payloads):
            if self.sdes_left > 0:
                self.sdes_left -= 1
                pkt = bytearray(self._tmpl_sdes)
            else:
                pkt = bytearray(self._tmpl)
            hl = len(pkt)
            pkt += payload
            seq = self.seq
            pkt[1] = pt | 0x80 if k == last else pt
            _pack_seq_ts(pkt, 2, seq, ts)
            pkt[hl + 2] = pid_hi
            pkt[hl + 3] = pid_lo
            pkt[hl + 4] = tl0
            history[seq % HISTORY] = pkt
            backlog.append(pkt)
            self.seq = (seq + 1) & 0xFFFF
        if len(backlog) > first:
            self.frame_marks.append((backlog[first], s.clock.send_time(n)))
        self.pid = (self.pid + 1) & 0x7FFF
        self.last_ts = ts
        self.frames += 1

    def drain(self, now: float) -> None:
        """Send from the backlog within the pacing budget."""
        backlog = self.backlog
        if not backlog:
            self.budget = min(self.budget, self.rate * TICK)
            self.budget_time = now
            return
        # a tick that came late may send what the time since the last one earned: capping the
        # budget at two ticks' worth turned every late tick into lost sending time, and a busy
        # generator's backlog grew to seconds (frames 1-2 s "late" at 164 sites)
        elapsed = now - self.budget_time
        self.budget = min(self.budget + self.rate * elapsed, self.rate * max(2 * TICK, elapsed) + 1200)
        self.budget_time = now
        send = self.source.transport.send_rtp
        marks = self.frame_marks
        while backlog and self.budget > 0:
            pkt = backlog.popleft()
            if marks and marks[0][0] is pkt:
                lag = now - marks.popleft()[1]
                send_lag_hist[min(SEND_LAG_BINS, int(lag * 1000)) if lag > 0 else 0] += 1
            # abs-send-time at the moment it leaves, as a browser's pacer writes it
            off = self._abs  # abs-send-time is the first extension in both templates
            if off:
                v = _abs_send_time()
                pkt[off] = v >> 16
                pkt[off + 1] = (v >> 8) & 0xFF
                pkt[off + 2] = v & 0xFF
            n = len(pkt)
            self.budget -= n
            if send(pkt):
                self.packets += 1
                self.bytes += n

    def request_keyframe(self, now: float) -> None:
        self.keyframe_requests += 1
        if not self.need_key:
            self._key_asked = now
            self._key_asked_frame = self.source.next_frame
        self.need_key = True

    def set_active(self, active: bool, now: float) -> None:
        if active == self.active:
            return
        self.active = active
        if active:
            # a re-enabled encoding starts with a keyframe, as a browser's does
            self.need_key = True
            self.wait_for_key = True
            self.sdes_left = max(self.sdes_left, 10)
        else:
            self.dropped += len(self.backlog)
            self.backlog.clear()
            self.frame_marks.clear()
            self._key_asked = 0.0  # a paused layer serves nobody; its restart is a keyframe anyway

    def on_nack(self, seqs: list[int]) -> None:
        self.nacked += len(seqs)
        tmpl = self._rtx_tmpl
        if tmpl is None:
            return
        send = self.source.transport.send_rtp
        for seq in seqs:
            pkt = self.history[seq % HISTORY]
            if pkt is None or ((pkt[2] << 8) | pkt[3]) != seq:
                continue
            hl = 12 + ((pkt[0] & 0x0F) << 2)
            if pkt[0] & 0x10:
                hl += 4 + (((pkt[hl + 2] << 8) | pkt[hl + 3]) << 2)
            rtx = bytearray(tmpl)
            rtx[1] = (pkt[1] & 0x80) | tmpl[1]
            rtx[2] = self.rtx_seq >> 8
            rtx[3] = self.rtx_seq & 0xFF
            rtx[4:8] = pkt[4:8]
            rtx += pkt[2:4]
            rtx += pkt[hl:]
            self.rtx_seq = (self.rtx_seq + 1) & 0xFFFF
            if send(rtx):
                self.retransmitted += 1

    def sender_report(self, ntp: int, now_ts: int) -> bytes:
        return rtcp.pack_sr(self.ssrc, ntp, now_ts, self.packets, self.bytes)

    def stats(self) -> dict:
        return {
            "rid": self.rid,
            "ssrc": self.ssrc,
            "active": self.active,
            "packets": self.packets,
            "bytes": self.bytes,
            "frames": self.frames,
            "keyframes": self.keyframes,
            "keyframe_requests": self.keyframe_requests,
            "nacked": self.nacked,
            "retransmitted": self.retransmitted,
        }


class SimulcastSource:
    """One site's camera: the cached layers of a `SyntheticMedia`, one `LayerSender` each."""

    def __init__(
        self,
        transport: "RawTransport",
        media: SyntheticMedia,
        payload_type: int,
        *,
        rtx_payload_type: Optional[int],
        mid: str,
        mid_id: int = 0,
        rid_id: int = 0,
        rrid_id: int = 0,
        abs_id: int = 0,
        rids: Optional[list[str]] = None,
        ssrcs: Optional[list[tuple[int, Optional[int]]]] = None,
        layer_indexes: Optional[list[int]] = None,
        site_id: Optional[str] = None,
        seed: Optional[int] = None,
    ) -> None:
        self.transport = transport
        self.media = media
        self.payload_type = payload_type
        self.rtx_payload_type = rtx_payload_type
        self.mid = mid
        self.mid_id = mid_id
        self.rid_id = rid_id
        self.rrid_id = rrid_id
        self.abs_id = abs_id
        self.site_id = site_id
        indexes = layer_indexes if layer_indexes is not None else list(range(len(media.layers)))
        if ssrcs is None:
            ssrcs = [(random.getrandbits(32) | 1, random.getrandbits(32) | 1 if rtx_payload_type is not None else None) for _ in indexes]
        self.layers = [
            LayerSender(self, media.layers[i], ssrc, rtx, rids[k] if rids else None) for k, (i, (ssrc, rtx)) in enumerate(zip(indexes, ssrcs))
        ]
        self.by_ssrc = {l.ssrc: l for l in self.layers}
        rng = random.Random(seed)
        self.ts_step = 90000 // media.fps
        self.ts_base = rng.getrandbits(32)
        self.clock = FrameClock(0.0, media.fps, media.loop_frames, rng.randrange(media.loop_frames), media.variant)
        self.next_frame = 0
        self.started = False
        self.resyncs = 0
        self._next_sr = 0.0

    @property
    def rids(self) -> list[Optional[str]]:
        return [l.rid for l in self.layers]

    def start(self, now: float) -> None:
        """Frame 0 is due now; the clock is registered under the site id for receivers."""
        self.clock.start = now
        self.next_frame = 0
        self.started = True
        self._next_sr = now + SR_INTERVAL * random.random()
        if self.site_id:
            CLOCKS[self.site_id] = self.clock

    def tick(self, now: float) -> None:
        if not self.started:
            self.start(now)
        clock = self.clock
        due = clock.start + self.next_frame / clock.fps
        if due > now and now < self._next_sr and not self._backlogged():
            return  # most ticks: nothing due, nothing queued
        self._tick(now, due)

    def _backlogged(self) -> bool:
        for layer in self.layers:
            if layer.backlog:
                return True
        return False

    def _tick(self, now: float, due: float) -> None:
        clock = self.clock
        if now - due > 0.5:
            # the generator fell behind: shift the schedule (the camera "paused") instead of
            # bursting half a second of frames; receivers see it as latency, not loss
            lag = now - due
            clock.start += lag
            self.resyncs += 1
            due = now
        while due <= now:
            n = self.next_frame
            idx = (n + clock.offset) % clock.loop
            ts = (self.ts_base + n * self.ts_step) & 0xFFFFFFFF
            for layer in self.layers:
                layer.queue_frame(n, idx, ts, now)
            self.next_frame = n + 1
            due = clock.start + self.next_frame / clock.fps
        for layer in self.layers:
            layer.drain(now)
        if now >= self._next_sr:
            self._next_sr = now + SR_INTERVAL
            self._send_reports(now)

    def _send_reports(self, now: float) -> None:
        ntp = rtcp.ntp_now()
        clock = self.clock
        ts = (self.ts_base + int((now - clock.start) * 90000)) & 0xFFFFFFFF
        packet = b"".join(l.sender_report(ntp, ts) for l in self.layers if l.active and l.packets)
        if packet:
            self.transport.send_rtcp(packet)

    def set_active(self, rids: list[str], now: Optional[float] = None) -> None:
        """Obey `publish_layers`: only the listed rids send (the lowest always does)."""
        now = time.monotonic() if now is None else now
        for k, layer in enumerate(self.layers):
            layer.set_active(k == 0 or layer.rid in rids, now)

    def request_keyframe(self, ssrc: int, now: Optional[float] = None) -> bool:
        layer = self.by_ssrc.get(ssrc)
        if layer is None:
            return False
        layer.request_keyframe(time.monotonic() if now is None else now)
        return True

    def on_nack(self, ssrc: int, seqs: list[int]) -> bool:
        layer = self.by_ssrc.get(ssrc)
        if layer is None:
            return False
        layer.on_nack(seqs)
        return True

    @property
    def packets(self) -> int:
        return sum(l.packets for l in self.layers)

    def stats(self) -> dict:
        return {
            "frames": self.next_frame,
            "resyncs": self.resyncs,
            "clock": self.clock.to_dict(),
            "layers": [l.stats() for l in self.layers],
        }


DTX_HANGOVER = 10  # 200 ms of silence before the encoder stops sending
DTX_EVERY = 20  # then one frame per 400 ms (libopus's DTX update rate)


class OpusLoopSource:
    """One site's microphone: cached Opus packets (speech or silence) with their levels."""

    def __init__(
        self,
        transport: "RawTransport",
        media: SyntheticMedia,
        ssrc: int,
        payload_type: int,
        *,
        mid: str = "",
        mid_id: int = 0,
        audio_level_id: int = 0,
        talk: Optional[TalkSchedule] = None,
        seed: Optional[int] = None,
        dtx: bool = False,
    ) -> None:
        self.transport = transport
        self.audio = media.audio
        #: Opus DTX as libopus does it when the SFU's answer asks for it (usedtx=1): after
        #: DTX_HANGOVER frames of silence, one frame every DTX_EVERY frames (400 ms)
        self.dtx = dtx
        self.silent_run = 0
        self.dtx_skipped = 0
        self.ssrc = ssrc
        self.talk = talk or TalkSchedule.always()
        items: list[tuple[int, bytes]] = []
        if audio_level_id:
            items.append((audio_level_id, b"\x7f"))
        if mid_id:
            items.append((mid_id, mid.encode()))
        self._tmpl, off = _template(payload_type, ssrc, items)
        self._level_off = off.get(audio_level_id, 0) if audio_level_id else 0
        rng = random.Random(seed)
        self.seq = rng.getrandbits(16)
        self.ts = rng.getrandbits(32)
        self.offset = rng.randrange(len(self.audio.packets))
        self.k = 0
        self.start = 0.0
        self.started = False
        self.packets = 0
        self.talking_packets = 0
        self.bytes = 0

    def tick(self, now: float) -> None:
        if not self.started:
            self.started = True
            self.start = now
        due = self.start + self.k * 0.02
        if now - due > 0.5:
            skip = int((now - due) / 0.02)
            self.k += skip
            self.ts = (self.ts + 960 * skip) & 0xFFFFFFFF
            due = self.start + self.k * 0.02
        a = self.audio
        while due <= now:
            if self.talk.is_talking(due - self.start):
                i = (self.k + self.offset) % len(a.packets)
                payload, level = a.packets[i], a.levels[i]
                self.talking_packets += 1
                self.silent_run = 0
            else:
                payload, level = a.silence, a.silence_level
                self.silent_run += 1
                if self.dtx and self.silent_run > DTX_HANGOVER and (self.silent_run - DTX_HANGOVER) % DTX_EVERY:
                    # a DTX gap: the timestamp runs on, the sequence number does not
                    self.dtx_skipped += 1
                    self.ts = (self.ts + 960) & 0xFFFFFFFF
                    self.k += 1
                    due = self.start + self.k * 0.02
                    continue
            pkt = bytearray(self._tmpl)
            pkt += payload
            _pack_seq_ts(pkt, 2, self.seq, self.ts)
            if self._level_off:
                pkt[self._level_off] = level | (0x80 if level < VOICE_LEVEL else 0)
            if self.transport.send_rtp(pkt):
                self.packets += 1
                self.bytes += len(pkt)
            self.seq = (self.seq + 1) & 0xFFFF
            self.ts = (self.ts + 960) & 0xFFFFFFFF
            self.k += 1
            due = self.start + self.k * 0.02


class MediaPacer:
    """Drives every SimulcastSource and OpusLoopSource of the process from one task."""

    _shared: Optional["MediaPacer"] = None

    def __init__(self, tick: float = TICK) -> None:
        self.tick = tick
        self.sources: list = []
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self.late_ticks = 0
        self.ticks = 0
        self.errors = 0
        self._task: Optional[asyncio.Task] = None

    @classmethod
    def shared(cls) -> "MediaPacer":
        """The running loop's pacer (a new one when the loop changed, as between tests)."""
        loop = asyncio.get_running_loop()
        pacer = cls._shared
        if pacer is None or pacer._loop is not loop:
            pacer = cls._shared = cls()
            pacer._loop = loop
        return pacer

    def add(self, *sources) -> None:
        for s in sources:
            if s is not None and s not in self.sources:
                self.sources.append(s)
        self.start()

    def remove(self, *sources) -> None:
        """Stop driving these sources; the task ends with the last one (add() restarts it)."""
        for s in sources:
            if s in self.sources:
                self.sources.remove(s)
        if not self.sources and self._task is not None:
            self._task.cancel()
            self._task = None

    def start(self) -> None:
        if self._task is None:
            self._loop = asyncio.get_running_loop()
            self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        clock: Callable[[], float] = time.monotonic
        next_t = clock()
        while True:
            now = clock()
            self.ticks += 1
            for s in self.sources:
                try:
                    s.tick(now)
                except Exception:  # one bad source must not stop every site's media
                    self.errors += 1
                    if self.errors < 5:
                        logger.exception("media source tick failed")
            next_t += self.tick
            delay = next_t - clock()
            if delay < -0.05:
                self.late_ticks += 1
                next_t = clock()
                delay = 0.0
            await asyncio.sleep(max(0.0, delay))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None


def munge_simulcast_offer(sdp: str, mid: str, rids: list[str], rid_id: int = RID_EXT_ID, rrid_id: int = RRID_EXT_ID) -> str:
    """Make the video m-section `mid` a browser-style simulcast offer (see module doc)."""
    out: list[str] = []
    current: Optional[str] = None
    section: list[str] = []

    def flush() -> None:
        if current == mid:
            body = [l for l in section if not l.startswith("a=ssrc")]
            ext_at = max((i for i, l in enumerate(body) if l.startswith("a=extmap:")), default=0) + 1
            body[ext_at:ext_at] = [f"a=extmap:{rid_id} {URI_RID}", f"a=extmap:{rrid_id} {URI_RRID}"]
            mid_at = next(i for i, l in enumerate(body) if l == f"a=mid:{mid}") + 1
            body[mid_at:mid_at] = [f"a=rid:{r} send" for r in rids] + [f"a=simulcast:send {';'.join(rids)}"]
            out.extend(body)
        else:
            out.extend(section)

    for line in sdp.split("\r\n"):
        if line.startswith("m="):
            flush()
            section = [line]
            current = None
            continue
        if line.startswith("a=mid:"):
            current = line[6:]
        section.append(line)
    flush()
    return "\r\n".join(out)
