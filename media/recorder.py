"""Recording a meeting (biên bản): the floor's VP8 video and Opus audio into one WebM file.

Nothing is decoded or encoded. A `TrackRecorder` is a RecvStream sink like a Consumer: it
gets every packet of the stream it records, strips the VP8 payload descriptor (RFC 7741),
puts a frame together from the packets that share an RTP timestamp up to the marker bit, and
hands whole frames (and Opus packets, which need no depacketizing) to a `WebmWriter`. The
writer owns the av output container on a thread of its own: av muxes the frames as they
came over the wire (`add_mux_stream("vp8")`, packets with pts/keyframe flag), so the server
never runs a codec.

Cost on the event loop is the depacketizing only (a few microseconds a packet, see
`python -m loadtest.bench_recording`); muxing and file writes happen on the writer thread
behind a bounded queue. When that queue is full a frame is dropped and counted, never
waited for: recording must not slow forwarding. A dropped or incomplete video frame breaks
VP8's reference chain, so the track then waits for the next keyframe (and asks for one).

`MeetingRecorder` follows the floor: every POLL_INTERVAL it picks who should be recorded
(the participant given the floor, else the hub, else the first publisher: the Router's own
order) and moves each track there. Video moves at a keyframe of the new source (the old one
keeps being recorded until then), audio at the next packet. Each source's RTP timestamps are
rebased onto the recording's clock when it starts (its sender report maps RTP time to
arrival time when there is one, so audio and video of one site stay in sync), clamped so
timestamps in the file only ever increase across switches.

Audio is the floor's own audio, not a mix of the room: mixing needs decoding every site's
Opus, summing and encoding again, which this server deliberately never does.
"""

from __future__ import annotations

import asyncio
import itertools
import fractions
import logging
import queue
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Union

import av

from . import vp8
from .rtp import RtpInfo, ts_newer

if TYPE_CHECKING:
    from .producer import Producer, RecvStream
    from .router import Router

logger = logging.getLogger(__name__)

VIDEO_CLOCK = 90000
AUDIO_CLOCK = 48000
VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK)
AUDIO_TIME_BASE = fractions.Fraction(1, AUDIO_CLOCK)
QUEUE_MAX = 512  # frames + audio packets waiting for the writer (~6 s of 30 fps video + audio)
REORDER_WAIT = 0.5  # how long a frame with a hole may hold up newer ones (NACK recovery), s
MAX_PENDING_FRAMES = 48  # frames buffered behind a hole before giving up on it at once
STALE_RESET = 1.0  # only "old" timestamps for this long: the publisher restarted, s
REANCHOR_JUMP = 5.0  # an RTP timestamp jump larger than this re-anchors the source, s
AUDIO_ONLY_AFTER = 10.0  # s of audio with no video keyframe: write an audio-only file
POLL_INTERVAL = 0.25  # how often the floor is looked at, s
SWITCH_KEYFRAME_RETRY = 0.5  # ask the new source again if its keyframe has not come, s
RECORDABLE = {"video": "video/vp8", "audio": "audio/opus"}  # what the file can hold as received
MIN_VIDEO_STEP = VIDEO_CLOCK // 1000  # WebM stores milliseconds: frames at least 1 ms apart
_HALF = 0x80000000
_MASK32 = 0xFFFFFFFF

# Opus samples per frame at 48 kHz by TOC config (RFC 6716 3.1): SILK 10/20/40/60 ms,
# hybrid 10/20 ms, CELT 2.5/5/10/20 ms.
_OPUS_FRAME = [480, 960, 1920, 2880] * 3 + [480, 960] * 2 + [120, 240, 480, 960] * 4


def opus_samples(payload: bytes) -> int:
    """Duration of one Opus packet in 48 kHz samples, from its TOC byte (0 if unreadable)."""
    if not payload:
        return 0
    toc = payload[0]
    code = toc & 0x03
    if code == 0:
        frames = 1
    elif code < 3:
        frames = 2
    else:
        frames = payload[1] & 0x3F if len(payload) > 1 else 0
    return _OPUS_FRAME[toc >> 3] * frames


# ---------------------------------------------------------------------------- writer


@dataclass
class WriterStats:
    video_frames: int = 0
    audio_packets: int = 0
    dropped: int = 0  # items refused because the writer's queue was full
    video_skipped: int = 0  # video frames that arrived after an audio-only file was started
    width: int = 0
    height: int = 0
    first_s: Optional[float] = None  # earliest timestamp written, s on the recording clock
    end_s: float = 0.0  # latest timestamp + duration written, s
    error: Optional[str] = None

    @property
    def duration_s(self) -> float:
        return max(0.0, self.end_s - (self.first_s or 0.0)) if self.first_s is not None else 0.0


class WebmWriter:
    """One WebM file, written by a thread of its own from a bounded queue.

    `put_video`/`put_audio` are called on the event loop and never block: they return
    False (and count) when the queue is full. The container is opened at the first video
    keyframe, whose size goes into the header; audio that comes first is held until then,
    or for AUDIO_ONLY_AFTER seconds, after which the file is audio-only. `close` blocks
    until the file is complete: call it from a thread (MeetingRecorder.stop does).
    """

    def __init__(
        self,
        path: Union[str, Path],
        *,
        queue_max: int = QUEUE_MAX,
        audio_only_after: float = AUDIO_ONLY_AFTER,
        metadata: Optional[dict[str, str]] = None,
    ) -> None:
        self.path = Path(path)
        self.queue_max = queue_max
        self.audio_only_after = audio_only_after
        self.metadata = dict(metadata or {})
        self.stats = WriterStats()
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=f"recorder:{self.path.name}", daemon=True)
        self._out = None
        self._vstream = None
        self._astream = None
        self._held_video: Optional[av.Packet] = None
        self._last_video_step = 3000

    def start(self) -> None:
        self._thread.start()

    # ---------------------------------------------------------------- event loop side

    def put_video(self, data: bytes, pts: int, keyframe: bool, size: Optional[tuple[int, int]]) -> bool:
        if self._closing or self._q.qsize() >= self.queue_max:
            self.stats.dropped += 1
            return False
        self._q.put((0, data, pts, keyframe, size))
        return True

    def put_audio(self, data: bytes, pts: int, duration: int) -> bool:
        if self._closing or self._q.qsize() >= self.queue_max:
            self.stats.dropped += 1
            return False
        self._q.put((1, data, pts, duration, None))
        return True

    @property
    def backlog(self) -> int:
        return self._q.qsize()

    def close(self, timeout: Optional[float] = None) -> WriterStats:
        """Finish the file (blocking: flushes the queue, writes cues and duration)."""
        if not self._closing:
            self._closing = True
            self._q.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)
        return self.stats

    # ---------------------------------------------------------------- writer thread

    def _run(self) -> None:
        held_audio: list[tuple] = []
        failed = False
        try:
            while True:
                item = self._q.get()
                if item is None:
                    break
                if failed:
                    continue
                try:
                    if self._out is None:
                        if item[0] == 0:
                            if not item[3] or item[4] is None:
                                continue  # the track only sends a keyframe first; be safe
                            self._open(item[4], video=True)
                            for a in held_audio:
                                self._mux_audio(a)
                            held_audio.clear()
                        else:
                            held_audio.append(item)
                            if (item[2] - held_audio[0][2]) >= self.audio_only_after * AUDIO_CLOCK:
                                logger.warning("recording %s: no video keyframe, writing audio only", self.path.name)
                                self._open(None, video=False)
                                for a in held_audio:
                                    self._mux_audio(a)
                                held_audio.clear()
                            continue
                    if item[0] == 0:
                        self._mux_video(item)
                    else:
                        self._mux_audio(item)
                except Exception as exc:  # disk full, av error: stop writing, keep draining
                    failed = True
                    self.stats.error = f"{type(exc).__name__}: {exc}"
                    logger.exception("recording %s: write failed", self.path.name)
            if not failed:
                if self._out is None:
                    self._open(None, video=False)  # nothing (or only audio) came: still a valid file
                    for a in held_audio:
                        self._mux_audio(a)
                if self._held_video is not None:
                    self._held_video.duration = self._last_video_step
                    self._mux(self._held_video, self._held_video.pts, self._last_video_step, VIDEO_CLOCK)
                    self._held_video = None
        except Exception as exc:
            self.stats.error = self.stats.error or f"{type(exc).__name__}: {exc}"
            logger.exception("recording %s: finishing failed", self.path.name)
        finally:
            if self._out is not None:
                try:
                    self._out.close()
                except Exception as exc:
                    self.stats.error = self.stats.error or f"{type(exc).__name__}: {exc}"
                    logger.exception("recording %s: closing failed", self.path.name)
                self._out = None

    def _open(self, size: Optional[tuple[int, int]], video: bool) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        out = av.open(str(self.path), "w", format="webm")
        self._out = out
        for k, v in self.metadata.items():
            out.metadata[k] = v
        if video and size is not None:
            w, h = size
            if hasattr(out, "add_mux_stream"):
                # no codec context at all: the packets are muxed as they are
                self._vstream = out.add_mux_stream("vp8", width=w, height=h)
            else:  # PyAV < 16: a libvpx context is opened for the header, never fed a frame
                self._vstream = out.add_stream("libvpx", width=w, height=h)
            self.stats.width, self.stats.height = w, h
        # The libopus context only supplies the OpusHead header (48 kHz, 2 channels as
        # negotiated in SDP); packets are muxed as received, nothing is encoded.
        self._astream = out.add_stream("libopus", rate=AUDIO_CLOCK, layout="stereo")

    def _mux(self, packet: av.Packet, pts: int, duration: int, clock: int) -> None:
        assert self._out is not None
        self._out.mux(packet)
        start = pts / clock
        if self.stats.first_s is None or start < self.stats.first_s:
            self.stats.first_s = start
        end = (pts + duration) / clock
        if end > self.stats.end_s:
            self.stats.end_s = end

    def _mux_video(self, item: tuple) -> None:
        if self._vstream is None:
            self.stats.video_skipped += 1
            return
        _, data, pts, keyframe, _size = item
        packet = av.Packet(data)
        packet.stream = self._vstream
        packet.time_base = VIDEO_TIME_BASE
        packet.pts = packet.dts = pts
        packet.is_keyframe = keyframe
        # a frame lasts until the next one: hold each frame until its successor is known
        held = self._held_video
        if held is not None:
            step = max(1, pts - held.pts)
            held.duration = step
            self._last_video_step = step
            self._mux(held, held.pts, step, VIDEO_CLOCK)
        self._held_video = packet
        self.stats.video_frames += 1

    def _mux_audio(self, item: tuple) -> None:
        _, data, pts, duration, _ = item
        packet = av.Packet(data)
        packet.stream = self._astream
        packet.time_base = AUDIO_TIME_BASE
        packet.pts = packet.dts = pts
        packet.duration = duration
        self._mux(packet, pts, duration, AUDIO_CLOCK)
        self.stats.audio_packets += 1


# ---------------------------------------------------------------------------- depacketizer


class _Frame:
    __slots__ = ("ts", "parts", "first", "last", "keyframe", "size", "created")

    def __init__(self, ts: int, now: float) -> None:
        self.ts = ts
        self.created = now
        self.parts: dict[int, bytes] = {}
        self.first = -1  # seq of the packet with S=1, partition 0
        self.last = -1  # seq of the packet with the marker bit
        self.keyframe = False
        self.size: Optional[tuple[int, int]] = None

    def complete(self) -> bool:
        return self.first >= 0 and self.last >= 0 and len(self.parts) == ((self.last - self.first) & 0xFFFF) + 1


# emit(ts, frame bytes, keyframe, (w, h) or None, now) -> False if the frame was not taken
FrameSink = Callable[[int, bytes, bool, Optional[tuple[int, int]], float], bool]


class Vp8Depacketizer:
    """RTP packets of one VP8 stream in (any order), whole frames out (decode order).

    A frame is emitted when all its packets are there and it directly follows the last
    emitted one in sequence numbers (padding-only packets in between are skipped). A frame
    whose packets have not all come when newer frames are waiting is given REORDER_WAIT for
    retransmissions; then it is dropped, and since every later inter frame depends on it,
    so is everything up to the next complete keyframe (`need_keyframe` is called so the
    publisher is asked for one). Output therefore always decodes.
    """

    def __init__(self, emit: FrameSink, need_keyframe: Callable[[float], None], max_wait: float = REORDER_WAIT) -> None:
        self.emit = emit
        self.need_keyframe = need_keyframe
        self.max_wait = max_wait
        self.frames: dict[int, _Frame] = {}  # RTP ts -> frame being assembled
        self.by_first: dict[int, _Frame] = {}  # seq of first packet -> frame
        self.fillers: set[int] = set()  # seqs of padding-only packets
        self.expect: Optional[int] = None  # seq the next frame must start at; None: wait for a keyframe
        self.last_ts: Optional[int] = None
        self.blocked_since = 0.0
        self.stale_since = 0.0
        self.emitted = 0
        self.dropped = 0  # frames thrown away (incomplete, or undecodable after a loss)
        self.malformed = 0

    def push(self, info: RtpInfo, now: float) -> None:
        data = info.data
        start = info.payload_offset
        end = len(data) - info.padding
        if start >= end:
            # padding-only (bandwidth probe): takes a sequence number between frames,
            # usually with the previous frame's timestamp
            self.fillers.add(info.seq)
            if self.frames:
                self._drain(now)
            return
        ts = info.ts
        if self.last_ts is not None and not ts_newer(ts, self.last_ts):
            # a late retransmission of a frame already emitted or given up; but if nothing
            # else comes for a while the publisher restarted its timestamps: start over
            if not self.stale_since:
                self.stale_since = now
            if now - self.stale_since < STALE_RESET:
                return
            self.reset()
        self.stale_since = 0.0
        d = vp8.descriptor_length(data, start, end)
        if d < 0 or start + d >= end:
            self.malformed += 1
            return
        frame = self.frames.get(ts)
        if frame is None:
            frame = self.frames[ts] = _Frame(ts, now)
        seq = info.seq
        if seq in frame.parts:
            return
        frame.parts[seq] = data[start + d : end]
        if info.vp8_start:
            frame.first = seq
            self.by_first[seq] = frame
            if info.keyframe:
                frame.keyframe = True
                frame.size = vp8.keyframe_size(data, start + d, end)
        if info.marker:
            frame.last = seq
        self._drain(now)

    def _drain(self, now: float) -> None:
        frames = self.frames
        while frames:
            if self.expect is not None:
                e = self.expect
                fillers = self.fillers
                while e in fillers:
                    fillers.discard(e)
                    e = (e + 1) & 0xFFFF
                self.expect = e
                f = self.by_first.get(e)
                if f is not None and f.complete():
                    if self._emit(f, now):
                        continue
                    return
                if len(frames) == 1:
                    (only,) = frames.values()
                    if only.first < 0 or only.first == e:
                        # the next frame's packets are still arriving
                        self.blocked_since = 0.0
                        return
                # a newer frame has started (or the next one is missing whole): a packet
                # was lost; give retransmission REORDER_WAIT before giving up on it
                if not self.blocked_since:
                    self.blocked_since = now
                if now - self.blocked_since < self.max_wait and len(frames) <= MAX_PENDING_FRAMES:
                    return
                self._give_up(now)
                continue
            # waiting for a keyframe: the oldest complete one starts a new chain
            key: Optional[_Frame] = None
            head: Optional[_Frame] = None  # oldest keyframe seen so far, complete or not
            for f in frames.values():
                if f.keyframe:
                    if head is None or ts_newer(head.ts, f.ts):
                        head = f
                    if f.complete() and (key is None or ts_newer(key.ts, f.ts)):
                        key = f
            if key is not None:
                self._drop_older(key.ts)
                if self._emit(key, now):
                    continue
                return
            if head is not None:
                self._drop_older(head.ts)  # inter frames before a keyframe are useless
            # (newer inter frames are kept: their keyframe's first packet may still come)
            excess = len(frames) - MAX_PENDING_FRAMES
            if excess > 0:
                for f in list(frames.values())[:excess]:  # oldest arrivals first
                    self._discard(f)
                    self.dropped += 1
            if head is None or now - head.created > self.max_wait:
                self.need_keyframe(now)  # none arriving right now: ask (the stream rate-limits)
            return

    def _emit(self, f: _Frame, now: float) -> bool:
        n = ((f.last - f.first) & 0xFFFF) + 1
        parts = f.parts
        first = f.first
        data = b"".join([parts[(first + i) & 0xFFFF] for i in range(n)])
        self._discard(f)
        self.expect = (f.last + 1) & 0xFFFF
        self.last_ts = f.ts
        self.blocked_since = 0.0
        if self.fillers:
            e = self.expect
            self.fillers = {s for s in self.fillers if ((s - e) & 0xFFFF) < 0x8000}
        if self.emit(f.ts, data, f.keyframe, f.size, now):
            self.emitted += 1
            return True
        # the writer could not take it: the chain is broken from here
        self.dropped += 1
        self.expect = None
        self.need_keyframe(now)
        return False

    def _discard(self, f: _Frame) -> None:
        self.frames.pop(f.ts, None)
        if f.first >= 0 and self.by_first.get(f.first) is f:
            del self.by_first[f.first]

    def _drop_older(self, ts: int) -> None:
        for f in list(self.frames.values()):
            if ts_newer(ts, f.ts):
                self._discard(f)
                self.dropped += 1

    def _give_up(self, now: float) -> None:
        """The expected frame will not be completed: wait for the next keyframe (the
        waiting branch of _drain drops what came before it, keeps what comes after)."""
        if self.expect is not None:
            f = self.by_first.get(self.expect)
            if f is not None:
                self._discard(f)
                self.dropped += 1
        self.expect = None
        self.blocked_since = 0.0

    def reset(self) -> None:
        """Forget everything pending and wait for a keyframe (publisher restart)."""
        self.dropped += len(self.frames)
        self.frames.clear()
        self.by_first.clear()
        self.fillers.clear()
        self.expect = None
        self.last_ts = None
        self.blocked_since = 0.0
        self.stale_since = 0.0

    def pending(self) -> int:
        return len(self.frames)


# ---------------------------------------------------------------------------- sink


class TrackRecorder:
    """A RecvStream sink recording one kind (video or audio) into a WebmWriter.

    Implements the sink interface the fan-out calls: `write(info, stream, now)` and
    `source_closed(stream)`. Its source can change (the floor moves): video switches at a
    keyframe of the new source, audio at its next packet; timestamps are rebased so the
    file's clock never goes back.
    """

    def __init__(self, kind: str, writer: WebmWriter, origin: float) -> None:
        self.kind = kind
        self.is_video = kind == "video"
        self.writer = writer
        self.origin = origin  # time.monotonic() at the start of the recording
        self.clock = VIDEO_CLOCK if self.is_video else AUDIO_CLOCK
        self.source: Optional["RecvStream"] = None
        self.target: Optional["RecvStream"] = None
        self.target_since = 0.0
        self.depacketizer: Optional[Vp8Depacketizer] = None
        # rebasing of the current source's RTP time onto the recording clock
        self._anchored = False
        self._base_pts = 0
        self._last_ts = 0
        self._ext = 0
        self.last_pts = -MIN_VIDEO_STEP  # last timestamp written (video), in clock units
        self.last_end = 0  # end of the last packet written (audio), in clock units
        # statistics
        self.packets = 0
        self.frames = 0
        self.late = 0
        self.switches = 0
        self.sources = 0
        self.keyframe_requests = 0
        self.errors = 0
        self.dropped_frames_prev = 0  # frames dropped by the depacketizers of earlier sources

    # ---------------------------------------------------------------- source selection

    def set_target(self, stream: Optional["RecvStream"], now: Optional[float] = None) -> None:
        """Record `stream` from its next keyframe (video) or packet (audio); None stops.

        The caller has already added this sink to `stream.sinks` (Router.attach_sink)."""
        if stream is None:
            self._detach(self.target)
            self._detach(self.source)
            self.target = None
            self._set_source(None)
            return
        if stream is self.source:
            if self.target is not None:
                self._detach(self.target)
                self.target = None
            return
        if stream is self.target:
            return
        if self.target is not None:
            self._detach(self.target)
        self.target = stream
        self.target_since = time.monotonic() if now is None else now

    def _detach(self, stream: Optional["RecvStream"]) -> None:
        if stream is not None and self in stream.sinks:
            stream.sinks.remove(self)

    def _set_source(self, stream: Optional["RecvStream"]) -> None:
        if self.depacketizer is not None:
            self.dropped_frames_prev += self.depacketizer.dropped + self.depacketizer.pending()
        self.source = stream
        self.depacketizer = None
        self._anchored = False
        if stream is not None:
            self.sources += 1
            if self.sources > 1:
                self.switches += 1
            if self.is_video:
                self.depacketizer = Vp8Depacketizer(self._on_frame, self._need_keyframe)

    def source_closed(self, stream: "RecvStream") -> None:
        if stream is self.target:
            self.target = None
        if stream is self.source:
            self._set_source(None)

    # ---------------------------------------------------------------- packet path

    def write(self, info: RtpInfo, stream: "RecvStream", now: float) -> None:
        if stream is not self.source:
            if stream is not self.target or (self.is_video and not info.keyframe):
                return
            # switch (on the new source's packet; the old source's list is not the one
            # being iterated, so detaching from it here is safe)
            self._detach(self.source)
            self.target = None
            self._set_source(stream)
        try:
            self.packets += 1
            if self.is_video:
                self.depacketizer.push(info, now)  # type: ignore[union-attr]
            else:
                self._audio(info, now)
        except Exception:
            # never let a recording problem reach the transport: the packet would be lost
            # for every subscriber after this sink in the fan-out
            self.errors += 1
            if self.errors == 1 or self.errors % 1000 == 0:
                logger.exception("recorder %s: packet handling failed (%d so far)", self.kind, self.errors)

    def _pts(self, ts: int, now: float) -> int:
        if not self._anchored:
            local = now
            s = self.source
            if s is not None and s.sr_arrival:
                # the publisher's sender report maps RTP time to our clock; the same mapping
                # for its audio and video keeps them in sync in the file
                d = ((ts - s.sr_rtp + _HALF) & _MASK32) - _HALF
                candidate = s.sr_arrival + d / self.clock
                if abs(candidate - now) < 1.0:
                    local = candidate
            base = int((local - self.origin) * self.clock)
            floor = self.last_pts + MIN_VIDEO_STEP if self.is_video else self.last_end
            self._base_pts = max(base, floor, 0)
            self._last_ts = ts
            self._ext = 0
            self._anchored = True
            return self._base_pts
        delta = ((ts - self._last_ts + _HALF) & _MASK32) - _HALF
        if abs(delta) > REANCHOR_JUMP * self.clock:
            # the publisher restarted its clock (or was silent/paused for long): place the
            # packet by its arrival again, still after everything already written
            self._anchored = False
            return self._pts(ts, now)
        self._ext += delta
        self._last_ts = ts
        return self._base_pts + self._ext

    def _on_frame(self, ts: int, data: bytes, keyframe: bool, size: Optional[tuple[int, int]], now: float) -> bool:
        pts = self._pts(ts, now)
        if pts < self.last_pts + MIN_VIDEO_STEP:
            pts = self.last_pts + MIN_VIDEO_STEP
        if not self.writer.put_video(data, pts, keyframe, size):
            return False
        self.last_pts = pts
        self.frames += 1
        return True

    def _need_keyframe(self, now: float) -> None:
        if self.source is not None and self.source.request_keyframe(now):
            self.keyframe_requests += 1

    def _audio(self, info: RtpInfo, now: float) -> None:
        data = info.data
        end = len(data) - info.padding
        start = info.payload_offset
        if end <= start:
            return
        payload = data[start:end]
        pts = self._pts(info.ts, now)
        if pts < self.last_end:
            self.late += 1  # reordered: the file needs increasing timestamps
            return
        duration = opus_samples(payload) or 960
        if self.writer.put_audio(payload, pts, duration):
            self.last_end = pts + duration
            self.frames += 1

    def stats(self) -> dict:
        d = self.depacketizer
        return {
            "source": self.source.producer.participant_id if self.source is not None else None,
            "packets": self.packets,
            "frames": self.frames,
            "dropped_frames": self.dropped_frames_prev + (d.dropped if d is not None else 0),
            "late": self.late,
            "switches": self.switches,
            "keyframe_requests": self.keyframe_requests,
            "errors": self.errors,
        }


# ---------------------------------------------------------------------------- meeting


@dataclass
class RecordingResult:
    path: str
    started_at: float  # Unix time
    stopped_at: float
    bytes: int
    duration_s: float
    video_frames: int
    audio_packets: int
    dropped: int  # writer queue full
    width: int
    height: int
    switches: int
    error: Optional[str]

    def as_dict(self) -> dict:
        return asdict(self)


RouterSource = Union["Router", Callable[[], Optional["Router"]]]


def top_layer(producer: "Producer") -> Optional["RecvStream"]:
    """The highest simulcast layer the publisher has sent at all (its only one otherwise)."""
    for s in reversed(producer.streams):
        if s.ssrc is not None:
            return s
    return None


class MeetingRecorder:
    """Record whoever has the floor of a meeting into one WebM file.

    `router` is the meeting's Router, or a callable returning the current one (a room's
    Router is replaced when the meeting empties and fills again; the recording goes on).
    """

    def __init__(
        self,
        router: RouterSource,
        path: Union[str, Path],
        *,
        metadata: Optional[dict[str, str]] = None,
        poll_interval: float = POLL_INTERVAL,
        queue_max: int = QUEUE_MAX,
    ) -> None:
        self._get_router: Callable[[], Optional["Router"]] = router if callable(router) else (lambda: router)
        self.path = Path(path)
        self.poll_interval = poll_interval
        self.writer = WebmWriter(self.path, queue_max=queue_max, metadata=metadata)
        self.origin = 0.0
        self.started_at = 0.0
        self.stopped_at = 0.0
        self.video: Optional[TrackRecorder] = None
        self.audio: Optional[TrackRecorder] = None
        self._task: Optional[asyncio.Task] = None
        self._stopping = False
        self.result: Optional[RecordingResult] = None

    @property
    def recording(self) -> bool:
        return self._task is not None and not self._stopping

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("recording already started")
        self.origin = time.monotonic()
        self.started_at = time.time()
        self.writer.start()
        self.video = TrackRecorder("video", self.writer, self.origin)
        self.audio = TrackRecorder("audio", self.writer, self.origin)
        self.follow()
        self._task = asyncio.ensure_future(self._poll())

    async def stop(self) -> RecordingResult:
        if self.result is not None:
            return self.result
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for track in (self.video, self.audio):
            if track is not None:
                track.set_target(None)
                router = self._get_router()
                if router is not None:
                    router.detach_sink(track)
        self.stopped_at = time.time()
        stats = await asyncio.get_running_loop().run_in_executor(None, self.writer.close)
        try:
            size = self.path.stat().st_size
        except OSError:
            size = 0
        self.result = RecordingResult(
            path=str(self.path),
            started_at=self.started_at,
            stopped_at=self.stopped_at,
            bytes=size,
            duration_s=round(stats.duration_s, 3),
            video_frames=stats.video_frames,
            audio_packets=stats.audio_packets,
            dropped=stats.dropped,
            width=stats.width,
            height=stats.height,
            switches=self.video.switches if self.video is not None else 0,
            error=stats.error,
        )
        return self.result

    # ---------------------------------------------------------------- following the floor

    def subject(self) -> Optional[str]:
        """The participant whose video is (or is about to be) recorded."""
        v = self.video
        if v is None:
            return None
        stream = v.target or v.source
        return stream.producer.participant_id if stream is not None else None

    @staticmethod
    def pick(router: "Router", kind: str) -> Optional["Producer"]:
        """The floor, else the Router's order (hub first, then who published first),
        among participants whose `kind` track has started flowing."""
        floor = router.floor
        best: Optional["Producer"] = None
        best_key = None
        # in worker mode the recording worker sees other workers' sites as remote producers
        for pid, t in itertools.chain(router.transports.items(), getattr(router, "remote", {}).items()):
            if t.closed:
                continue
            p = t.producers.get(kind)
            if p is None or p.closed or p.mime != RECORDABLE[kind] or all(s.ssrc is None for s in p.streams):
                continue
            key = -1 if pid == floor else router.priority.get(pid, 1 << 40)
            if best_key is None or key < best_key:
                best, best_key = p, key
        return best

    def follow(self) -> None:
        """Move each track to who should be recorded now (cheap; run every poll).

        Simulcast: a new subject is taken on the layer flowing now (a quick switch), then
        moved up to its top layer; attaching to that layer is what tells the Router it is
        wanted (it un-pauses it at the publisher), and the current layer is recorded until
        the top one's keyframe comes."""
        router = self._get_router()
        now = time.monotonic()
        for track in (self.video, self.audio):
            if track is None:
                continue
            producer = self.pick(router, track.kind) if router is not None else None
            if producer is None:
                continue  # keep what is being recorded (if anything) until someone is there
            source = track.source
            if source is None or source.producer is not producer or now - source.last_packet > 1.0:
                wanted = producer.best_stream()  # a new subject, or its layer stopped
            else:
                wanted = top_layer(producer)
            current = track.target or source
            if wanted is None:
                continue
            if wanted is current:
                target = track.target
                if (target is not None and track.is_video and now - track.target_since > SWITCH_KEYFRAME_RETRY
                        and now - target.last_packet < 1.0):
                    if target.request_keyframe(now):
                        track.keyframe_requests += 1
                    track.target_since = now
                continue
            if wanted is source:
                track.set_target(wanted, now)  # back to the current source: cancel the switch
                continue
            if wanted is producer.best_stream():
                stream = router.attach_sink(producer.participant_id, track.kind, track)  # type: ignore[union-attr]
            else:
                stream = wanted
                if track not in stream.sinks:
                    stream.sinks.append(track)
                if track.is_video:
                    stream.request_keyframe(now)
            if stream is not None:
                track.set_target(stream, now)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                self.follow()
            except Exception:
                logger.exception("recorder %s: following the floor failed", self.path.name)

    def stats(self) -> dict:
        w = self.writer.stats
        return {
            "path": str(self.path),
            "recording": self.recording,
            "subject": self.subject(),
            "elapsed_s": round(time.monotonic() - self.origin, 3) if self.origin else 0.0,
            "video_frames": w.video_frames,
            "audio_packets": w.audio_packets,
            "dropped": w.dropped,
            "backlog": self.writer.backlog,
            "video": self.video.stats() if self.video is not None else None,
            "audio": self.audio.stats() if self.audio is not None else None,
        }
