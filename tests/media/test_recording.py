"""Recording (biên bản): VP8/Opus remuxed into WebM without a codec in the server.

The fast tests drive the depacketizer and writer with real libvpx/libopus output packetized
as a browser does; the slow ones record real aiortc peers through the in-process server,
directly and through the REST API, and check the file with av: duration, frame count,
both streams, every video frame decodes at the right size, timestamps only increase, and
forwarding to subscribers is undisturbed while recording.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import av
import numpy as np
import pytest
from aiohttp.test_utils import TestServer

from loadtest.bench_recording import build_audio, encode_opus, rtp, vp8_packets
from loadtest.peer import SyntheticSite
from media import MediaSettings, vp8
from media.producer import Producer
from media.recorder import MeetingRecorder, TrackRecorder, Vp8Depacketizer, WebmWriter, opus_samples
from media.router import Router
from media.rtp import parse_rtp
from server.app import SIGNALING_KEY, build_app
from server.auth import TokenService
from server.config import Settings
from server.recordings import RECORDINGS_KEY, setup_routes
from server.storage import Storage

FPS = 15
NO_EXT = [0] * 256


# ---------------------------------------------------------------------------- helpers


def encode(frames: int, size=(160, 120), keyframes=(0,)) -> list[tuple[bytes, bool]]:
    w, h = size
    enc = av.CodecContext.create("libvpx", "w")
    enc.width, enc.height, enc.pix_fmt = w, h, "yuv420p"
    enc.time_base = fractions.Fraction(1, FPS)
    enc.framerate = FPS
    enc.options = {"deadline": "realtime", "lag-in-frames": "0"}
    out = []
    for i in range(frames):
        img = np.zeros((h, w, 3), np.uint8)
        img[:, (i * 4) % w : (i * 4) % w + 8] = 255
        frame = av.VideoFrame.from_ndarray(img, format="bgr24")
        frame.pts = i
        if i in keyframes:
            frame.pict_type = av.video.frame.PictureType.I
        out.extend((bytes(p), p.is_keyframe) for p in enc.encode(frame))
    return out


def packetize(encoded, mtu=48, seq0=100, ts0=1000, ssrc=0x1234, padding_after=()):
    """RTP packets (bytes) of a VP8 clip with small payloads so frames span packets;
    a padding-only packet after each frame index listed in `padding_after`."""
    packets, seq = [], seq0
    for n, (frame, _key) in enumerate(encoded):
        chunks = []
        for i in range(0, len(frame), mtu):
            desc = bytes([0x90 if i == 0 else 0x80, 0x80, 0x80 | ((n >> 8) & 0x7F), n & 0xFF])
            chunks.append(desc + frame[i : i + mtu])
        for j, payload in enumerate(chunks):
            packets.append(rtp(96, seq, ts0 + n * 6000, ssrc, j == len(chunks) - 1, payload))
            seq += 1
        if n in padding_after:
            pad = bytes([0x80 | 0x20, 96, (seq >> 8) & 0xFF, seq & 0xFF]) + (ts0 + n * 6000).to_bytes(4, "big")
            packets.append(pad + ssrc.to_bytes(4, "big") + bytes(15) + bytes([16]))
            seq += 1
    return packets


def info_of(packet: bytes):
    info = parse_rtp(packet, NO_EXT)
    vp8.parse_descriptor(info)
    return info


class Collect:
    def __init__(self, accept=True) -> None:
        self.frames: list[tuple[int, bytes, bool, object]] = []
        self.keyframe_requests = 0
        self.accept = accept

    def emit(self, ts, data, key, size, now) -> bool:
        if not self.accept:
            return False
        self.frames.append((ts, data, key, size))
        return True

    def need(self, now) -> None:
        self.keyframe_requests += 1


def decode_all(frames: list[bytes]) -> list[tuple[int, int]]:
    dec = av.CodecContext.create("vp8", "r")
    sizes = []
    for data in frames:
        for f in dec.decode(av.Packet(data)):
            sizes.append((f.width, f.height))
    return sizes


@dataclass
class Probe:
    duration: float
    streams: dict
    video_pts: list = field(default_factory=list)
    audio_pts: list = field(default_factory=list)
    audio_end: list = field(default_factory=list)
    keyframes: int = 0
    decoded: int = 0
    sizes: set = field(default_factory=set)
    audio_samples: int = 0
    log: list = field(default_factory=list)


def probe(path: Path) -> Probe:
    """Read the file as a player would; decoding here (the test) is fine, never in the server.
    ffmpeg's own error messages (demuxer or decoder complaints) are collected in `log`."""
    level = av.logging.get_level()
    av.logging.set_level(av.logging.ERROR)  # PyAV keeps ffmpeg quiet by default
    try:
        return _probe(path)
    finally:
        av.logging.set_level(level)


def _probe(path: Path) -> Probe:
    with av.logging.Capture() as log:
        with av.open(str(path)) as c:
            p = Probe(duration=(c.duration or 0) / 1e6, streams={s.type: s.codec_context.name for s in c.streams})
            for pkt in c.demux():
                if pkt.size == 0:
                    continue
                ms = float(pkt.time_base) * 1000
                if pkt.stream.type == "video":
                    p.video_pts.append(pkt.pts * ms)
                    p.keyframes += pkt.is_keyframe
                else:
                    p.audio_pts.append(pkt.pts * ms)
                    p.audio_end.append((pkt.pts + (pkt.duration or 0)) * ms)
        with av.open(str(path)) as c:
            if c.streams.video:
                for frame in c.decode(video=0):
                    p.decoded += 1
                    p.sizes.add((frame.width, frame.height))
        with av.open(str(path)) as c:
            if c.streams.audio:
                for frame in c.decode(audio=0):
                    p.audio_samples += frame.samples
    p.log = [entry for entry in log if entry[0] <= av.logging.ERROR]
    return p


def strictly_increasing(values) -> bool:
    return all(b > a for a, b in zip(values, values[1:]))


# ---------------------------------------------------------------------------- fast: parsing


def test_descriptor_length_and_keyframe_size():
    (frame, key), *_ = encode(1, size=(320, 240))
    assert key
    for pid in (5, 300):
        (payload,) = [p for p in vp8_packets(frame[:100], pid)]
        d = vp8.descriptor_length(payload, 0, len(payload))
        assert d == 4 and payload[d:] == frame[:100]
        assert vp8.keyframe_size(payload, d, len(payload)) == (320, 240)
    assert vp8.descriptor_length(bytes([0x10]) + frame, 0, 1 + len(frame)) == 1  # no X
    # X with I (7-bit), L, T: 1 + 1 + 1 + 1 + 1
    assert vp8.descriptor_length(bytes([0x90, 0xE0, 0x05, 0x07, 0x40, 0x00]), 0, 6) == 5
    assert vp8.descriptor_length(bytes([0x90, 0x80]), 0, 2) == -1  # PictureID missing
    assert vp8.keyframe_size(bytes([0x01]) + frame[1:], 0, len(frame)) is None  # inter frame


def test_opus_packet_durations():
    packets = encode_opus(5)
    assert all(opus_samples(p) == 960 for p in packets)  # 20 ms CELT
    assert opus_samples(bytes([(16 << 3) | 0])) == 120  # 2.5 ms CELT
    assert opus_samples(bytes([(3 << 3) | 1])) == 2 * 2880  # 2 x 60 ms SILK
    assert opus_samples(bytes([(31 << 3) | 3, 3])) == 3 * 960
    assert opus_samples(b"") == 0


# ---------------------------------------------------------------------------- fast: depacketizer


def _run(depack: Vp8Depacketizer, packets, dt=0.01, start=100.0) -> float:
    now = start
    for p in packets:
        depack.push(info_of(p), now)
        now += dt
    return now


def test_frames_are_reassembled_in_order_and_decode():
    encoded = encode(30)
    packets = packetize(encoded)
    assert len(packets) > len(encoded)  # frames span several packets
    out = Collect()
    _run(Vp8Depacketizer(out.emit, out.need), packets)
    assert [f[1] for f in out.frames] == [e[0] for e in encoded]
    assert out.frames[0][2] and out.frames[0][3] == (160, 120)
    assert decode_all([f[1] for f in out.frames]) == [(160, 120)] * 30


def test_reordering_and_padding_are_absorbed():
    encoded = encode(30)
    packets = packetize(encoded, padding_after=(3, 4, 17))
    rng = np.random.default_rng(7)
    shuffled = []
    for i in range(0, len(packets), 6):  # reorder inside windows of 6 packets
        window = packets[i : i + 6]
        shuffled += [window[j] for j in rng.permutation(len(window))]
    assert shuffled != packets
    out = Collect()
    _run(Vp8Depacketizer(out.emit, out.need), shuffled)
    assert [f[1] for f in out.frames] == [e[0] for e in encoded]


def test_loss_waits_for_the_next_keyframe():
    encoded = encode(40, keyframes=(0, 25))
    packets = packetize(encoded)
    victim = next(i for i, p in enumerate(packets) if info_of(p).ts == 1000 + 10 * 6000)
    out = Collect()
    depack = Vp8Depacketizer(out.emit, out.need, max_wait=0.2)
    _run(depack, packets[:victim] + packets[victim + 1 :], dt=0.02)
    got = [f[1] for f in out.frames]
    assert got == [e[0] for e in encoded[:10]] + [e[0] for e in encoded[25:]]
    assert out.keyframe_requests > 0
    assert depack.dropped >= 15 - 1
    assert len(decode_all(got)) == len(got)  # what was kept decodes


def test_loss_just_before_a_keyframe_keeps_the_frames_after_it():
    encoded = encode(30, keyframes=(0, 11))
    packets = packetize(encoded)
    victim = next(i for i, p in enumerate(packets) if info_of(p).ts == 1000 + 10 * 6000)
    del packets[victim]
    out = Collect()
    _run(Vp8Depacketizer(out.emit, out.need, max_wait=0.05), packets, dt=0.02)
    assert [f[1] for f in out.frames] == [e[0] for e in encoded[:10] + encoded[11:]]


def test_publisher_timestamp_restart_recovers():
    """A publisher whose RTP clock goes back (encoder restart) looks like one long run of
    late packets; after STALE_RESET the depacketizer starts over at a keyframe."""
    encoded1, encoded2 = encode(10), encode(30, keyframes=(0, 20))
    first = packetize(encoded1, ts0=3_000_000, seq0=500)
    second = packetize(encoded2, ts0=1000, seq0=40000)
    out = Collect()
    depack = Vp8Depacketizer(out.emit, out.need)
    now = _run(depack, first, dt=0.02)
    requests = out.keyframe_requests
    _run(depack, second, dt=0.05, start=now)
    assert [f[1] for f in out.frames] == [e[0] for e in encoded1 + encoded2[20:]]
    assert out.keyframe_requests > requests


def test_late_retransmission_within_the_wait_is_used():
    encoded = encode(20)
    packets = packetize(encoded)
    victim = next(i for i, p in enumerate(packets) if info_of(p).ts == 1000 + 5 * 6000)
    late = packets.pop(victim)
    packets.insert(victim + 4, late)  # arrives 4 packets later, like an RTX answer to a NACK
    out = Collect()
    _run(Vp8Depacketizer(out.emit, out.need, max_wait=0.5), packets, dt=0.01)
    assert [f[1] for f in out.frames] == [e[0] for e in encoded]
    assert out.keyframe_requests == 0


def test_starts_at_a_keyframe_only():
    encoded = encode(30, keyframes=(0, 12))
    packets = packetize(encoded)
    first_of_3 = next(i for i, p in enumerate(packets) if info_of(p).ts == 1000 + 3 * 6000)
    out = Collect()
    _run(Vp8Depacketizer(out.emit, out.need), packets[first_of_3:])  # joined mid-stream
    assert out.frames[0][2] and [f[1] for f in out.frames] == [e[0] for e in encoded[12:]]


# ---------------------------------------------------------------------------- fast: writer


class _Stream:
    """The few RecvStream attributes a TrackRecorder reads, for packets fed by hand."""

    def __init__(self, name: str) -> None:
        self.sinks: list = []
        self.sr_arrival = 0.0
        self.sr_rtp = 0
        self.keyframe_asks = 0
        self.producer = type("P", (), {"participant_id": name})()

    def request_keyframe(self, now: float) -> bool:
        self.keyframe_asks += 1
        return True


def test_writer_full_queue_drops_and_track_waits_for_keyframe(tmp_path):
    writer = WebmWriter(tmp_path / "q.webm", queue_max=3)  # thread not started: queue fills
    track = TrackRecorder("video", writer, time.monotonic())
    stream = _Stream("a")
    track.set_target(stream)
    encoded = encode(20, keyframes=(0, 15))
    now = time.monotonic()
    for p in packetize(encoded):
        track.write(info_of(p), stream, now)
        now += 0.005
    assert writer.stats.dropped >= 1 and stream.keyframe_asks >= 1
    assert track.frames == 3  # three queued; the rest (keyframe at 15 included) found the queue full
    writer.start()
    writer.close()
    assert probe(tmp_path / "q.webm").decoded == 3


def test_source_switch_rebases_to_increasing_timestamps(tmp_path):
    """Two sources with unrelated RTP clocks and sizes, switched at a keyframe: one
    continuous file whose timestamps only increase and whose every frame decodes."""
    path = tmp_path / "switch.webm"
    writer = WebmWriter(path)
    writer.start()
    origin = time.monotonic()
    track = TrackRecorder("video", writer, origin)
    audio = TrackRecorder("audio", writer, origin)
    a, b = _Stream("a"), _Stream("b")
    pa = packetize(encode(30, size=(160, 120)), ts0=4_000_000_000, seq0=65500)  # both wrap
    pb = packetize(encode(30, size=(96, 64), keyframes=(0, 10)), ts0=77, seq0=9)
    aud_a = build_audio(encode_opus(50), 75, ssrc=1)
    track.set_target(a)
    audio.set_target(a)
    now = origin
    for p in pa[: len(pa) // 2]:
        track.write(info_of(p), a, now)
        now += 1 / 30
    for i, p in enumerate(aud_a[:40]):
        audio.write(parse_rtp(p, NO_EXT), a, origin + i * 0.02)
    track.set_target(b)
    audio.set_target(b)
    for pa_, pb_ in zip(pa[len(pa) // 2 :], pb):  # old source keeps coming until b's keyframe
        track.write(info_of(pa_), a, now)
        track.write(info_of(pb_), b, now)
        now += 1 / 30
    for i, p in enumerate(build_audio(encode_opus(50), 40, ssrc=2)):
        audio.write(parse_rtp(p, NO_EXT), b, origin + 0.5 + i * 0.02)  # overlaps a: clamped
    writer.close()
    assert track.switches == 1 and audio.switches == 1
    info = probe(path)
    assert info.log == []
    assert info.decoded == len(info.video_pts) == track.frames
    assert info.sizes == {(160, 120), (96, 64)}
    assert strictly_increasing(info.video_pts)
    assert strictly_increasing(info.audio_pts)
    assert all(s >= e - 0.5 for s, e in zip(info.audio_pts[1:], info.audio_end))  # no overlap


class _Transport:
    """What a Producer, its RecvStreams and the Router's sink calls touch; RTCP is kept."""

    rtcp_ssrc = 1
    ext_kinds = NO_EXT
    rtt = 0.0
    closed = False

    def __init__(self, participant_id: str) -> None:
        self.participant_id = participant_id
        self.producers: dict = {}
        self.rtcp: list[bytes] = []

    def send_rtcp(self, packet: bytes) -> None:
        self.rtcp.append(packet)


def by_frame(packets: list[bytes]) -> list[list[bytes]]:
    out: list[list[bytes]] = []
    last = None
    for p in packets:
        ts = parse_rtp(p, NO_EXT).ts
        if ts != last:
            out.append([])
            last = ts
        out[-1].append(p)
    return out


async def test_simulcast_starts_on_the_flowing_layer_then_takes_the_top_one(tmp_path):
    """The recorder starts on the best layer flowing now, then attaches to the top layer
    (which is what makes the Router un-pause it at the publisher) and moves there at its
    keyframe; the file holds both sizes, every frame decodable."""
    router = Router("m", MediaSettings())
    transport = _Transport("pub")
    producer = Producer(transport, "video", "1", "video/vp8", 90000, 96, None, {"nack", "nack pli"}, ["q", "h", "f"])
    transport.producers["video"] = producer
    router.transports["pub"] = transport  # type: ignore[assignment]
    router.priority["pub"] = 1
    q, h, f = producer.streams
    clips = {}
    for i, (stream, size) in enumerate(zip((q, h, f), ((80, 60), (160, 120), (320, 240)))):
        stream.ssrc = 100 + i
        clips[stream] = by_frame(packetize(encode(30, size, keyframes=(0, 10)), ssrc=stream.ssrc, seq0=1000 * i))

    def feed(stream, frames):
        for frame in frames:
            for p in frame:
                stream.on_rtp(parse_rtp(p, NO_EXT), time.monotonic())

    feed(q, clips[q][:10])
    feed(h, clips[h][:10])  # f has an SSRC but is paused: nobody took it
    recorder = MeetingRecorder(router, tmp_path / "sim.webm", poll_interval=3600)
    await recorder.start()
    track = recorder.video
    assert track.target is h and track in h.sinks  # the best flowing layer, via attach_sink
    feed(h, clips[h][10:20])
    assert track.source is h and track.frames == 10
    recorder.follow()
    assert track.target is f and track in f.sinks and track.source is h  # waits on the top layer
    feed(h, clips[h][20:22])
    feed(f, clips[f][10:25])  # f resumes with a keyframe
    assert track.source is f and track not in h.sinks
    recorder.follow()
    assert track.target is None and track.source is f
    result = await recorder.stop()
    assert track not in f.sinks and result.switches == 1
    info = probe(tmp_path / "sim.webm")
    assert info.decoded == len(info.video_pts) == 10 + 2 + 15 and info.log == []
    assert info.sizes == {(160, 120), (320, 240)}
    assert strictly_increasing(info.video_pts)


# ---------------------------------------------------------------------------- slow: real peers


async def _wait(predicate, timeout: float = 10.0, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(step)
    return predicate()


async def _start(server, site: str, role: str = "site", publish: bool = True, **kw) -> SyntheticSite:
    peer = SyntheticSite(server.url, server.token(site, role), publish_video=publish, publish_audio=publish, fps=FPS, **kw)
    await peer.join()
    await peer.start_media()
    return peer


def _flowing(server, peer: SyntheticSite) -> bool:
    room = server.signaling.rooms.get("demo")
    t = room.router.transports.get(peer.joined["participant"]["id"]) if room else None
    if t is None:
        return False
    return all(t.producers.get(k) is not None and t.producers[k].streams[0].received > 10 for k in ("video", "audio"))


def _frames(peer: SyntheticSite, publisher: SyntheticSite) -> int:
    track = peer.track_for(publisher.joined["participant"]["id"], "video")
    return track.frames if track else 0


async def _close(*peers) -> None:
    await asyncio.gather(*(p.close() for p in peers), return_exceptions=True)


def _check_recording(info: Probe, seconds: float, sizes: set) -> None:
    assert info.streams == {"video": "vp8", "audio": "opus"}
    assert info.log == [], info.log
    assert info.duration == pytest.approx(seconds, rel=0.25)
    assert len(info.video_pts) == pytest.approx(FPS * seconds, rel=0.25)
    assert info.decoded == len(info.video_pts)  # every frame decodes
    assert info.sizes == sizes
    assert info.keyframes >= 1
    assert strictly_increasing(info.video_pts) and strictly_increasing(info.audio_pts)
    assert info.audio_samples == pytest.approx(48000 * seconds, rel=0.25)


@pytest.mark.slow
async def test_records_the_floor_video_and_audio(hoinghi_server, tmp_path):
    pub = await _start(hoinghi_server, "hub", "hub")
    try:
        assert await _wait(lambda: _flowing(hoinghi_server, pub), 10)
        router = hoinghi_server.signaling.rooms["demo"].router
        recorder = MeetingRecorder(router, tmp_path / "floor.webm")
        t0 = time.monotonic()
        await recorder.start()
        await asyncio.sleep(4.0)
        result = await recorder.stop()
        seconds = time.monotonic() - t0
        assert result.error is None and result.dropped == 0
        assert recorder.video.sources == 1 and recorder.audio.sources == 1
        assert all(recorder not in s.sinks for t in router.transports.values() for p in t.producers.values() for s in p.streams)
        info = probe(tmp_path / "floor.webm")
        _check_recording(info, seconds, {(320, 240)})
        assert result.video_frames == len(info.video_pts)
        assert result.bytes == (tmp_path / "floor.webm").stat().st_size
        assert result.duration_s == pytest.approx(info.duration, abs=0.1)
    finally:
        await _close(pub)


@pytest.mark.slow
async def test_forwarding_keeps_full_rate_while_recording(hoinghi_server, tmp_path):
    pub = await _start(hoinghi_server, "hub", "hub")
    subs = [await _start(hoinghi_server, f"s{i}", publish=False) for i in range(2)]
    try:
        assert await _wait(lambda: all(_frames(s, pub) > 5 for s in subs), 10)
        recorder = MeetingRecorder(hoinghi_server.signaling.rooms["demo"].router, tmp_path / "busy.webm")
        await recorder.start()
        assert await _wait(lambda: recorder.video.frames > 0, 5)
        sent0 = pub.video_track.frames
        before = [_frames(s, pub) for s in subs]
        await asyncio.sleep(4.0)
        sent = pub.video_track.frames - sent0
        got = [_frames(s, pub) - b for s, b in zip(subs, before)]
        result = await recorder.stop()
        for g in got:
            assert abs(g - sent) <= 2, (got, sent)  # every frame still reached every subscriber
        for s in subs:
            stats = await s.inbound_stats()
            assert stats[s.slot_of(pub.joined["participant"]["id"])["mid"]].packetsLost == 0
        assert result.dropped == 0 and result.error is None
        assert result.video_frames >= sent - 2
    finally:
        await _close(pub, *subs)


@pytest.mark.slow
async def test_floor_changes_switch_the_recorded_site(hoinghi_server, tmp_path):
    hub = await _start(hoinghi_server, "hub", "hub")
    site = await _start(hoinghi_server, "s-b", video_size=(160, 120))
    try:
        assert await _wait(lambda: _flowing(hoinghi_server, hub) and _flowing(hoinghi_server, site), 10)
        router = hoinghi_server.signaling.rooms["demo"].router
        recorder = MeetingRecorder(router, tmp_path / "switch.webm")
        t0 = time.monotonic()
        await recorder.start()
        hub_id, site_id = hub.joined["participant"]["id"], site.joined["participant"]["id"]
        assert recorder.subject() == hub_id  # no floor: the hub
        await asyncio.sleep(2.0)
        router.set_floor(site_id)
        assert await _wait(lambda: recorder.video.source is not None
                           and recorder.video.source.producer.participant_id == site_id, 3)
        assert recorder.audio.source.producer.participant_id == site_id
        await asyncio.sleep(2.0)
        await site.close()  # the floor leaves: back to the hub
        assert await _wait(lambda: recorder.video.source is not None
                           and recorder.video.source.producer.participant_id == hub_id, 3)
        await asyncio.sleep(1.0)
        result = await recorder.stop()
        seconds = time.monotonic() - t0
        assert result.switches == 2 and result.error is None
        info = probe(tmp_path / "switch.webm")
        _check_recording(info, seconds, {(320, 240), (160, 120)})
    finally:
        await _close(hub, site)


# ---------------------------------------------------------------------------- slow: REST API


@dataclass
class ApiServer:
    url: str
    settings: Settings
    storage: Storage
    tokens: TokenService
    server: TestServer

    def token(self, site: str, role: str = "site", meeting: str = "demo") -> str:
        return self.tokens.issue(meeting, site, role, 600)

    @property
    def signaling(self):
        return self.server.app[SIGNALING_KEY]


@pytest.fixture
async def api_server(tmp_path: Path):
    """The conftest server plus the recording routes (setup_routes is idempotent, so this
    holds whether or not build_app already calls it)."""
    settings = Settings(data_dir=tmp_path, host="127.0.0.1", port=0, announce_ip="127.0.0.1", workers=0)
    storage = Storage(settings.db_path)
    storage.ensure_demo()
    storage.create_meeting("quiet", "Không ai tham dự")
    tokens = TokenService(settings.secret_path)
    app = await build_app(settings, storage, tokens)
    setup_routes(app, storage, tokens, app[SIGNALING_KEY])
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        yield ApiServer(f"http://127.0.0.1:{server.port}", settings, storage, tokens, server)
    finally:
        await server.close()
        storage.close()


@pytest.mark.slow
async def test_record_through_the_console_api(api_server, tmp_path):
    srv = api_server
    hub_auth = {"Authorization": f"Bearer {srv.token('hub', 'hub')}"}
    url = f"{srv.url}/api/meetings/demo/recording"
    pub = await _start(srv, "hub", "hub")
    async with aiohttp.ClientSession() as http:
        try:
            assert await _wait(lambda: _flowing(srv, pub), 10)
            # refusals first: clear JSON errors
            async with http.post(url, json={"action": "start"}) as r:
                assert r.status == 401 and (await r.json())["error"] == "auth_required"
                assert r.headers["WWW-Authenticate"].startswith("Bearer")
            async with http.post(url, json={"action": "start"}, headers={"Authorization": "Bearer nonsense"}) as r:
                assert r.status == 401 and (await r.json())["error"] == "auth_invalid"
            site_auth = {"Authorization": f"Bearer {srv.token('s1')}"}
            async with http.post(url, json={"action": "start"}, headers=site_auth) as r:
                assert r.status == 403 and (await r.json())["error"] == "forbidden"
            other = {"Authorization": f"Bearer {srv.token('hub', 'hub', meeting='quiet')}"}
            async with http.post(url, json={"action": "start"}, headers=other) as r:
                assert r.status == 403 and (await r.json())["error"] == "wrong_meeting"
            async with http.post(f"{srv.url}/api/meetings/quiet/recording", json={"action": "start"}, headers=other) as r:
                assert r.status == 409 and (await r.json())["error"] == "meeting_not_live"
            async with http.post(url, json={"action": "pause"}, headers=hub_auth) as r:
                assert r.status == 400 and (await r.json())["error"] == "bad_action"
            async with http.post(url, data=b"{", headers=hub_auth) as r:
                assert r.status == 400 and (await r.json())["error"] == "bad_json"
            async with http.post(url, json={"action": "stop"}, headers=hub_auth) as r:
                assert r.status == 409 and (await r.json())["error"] == "not_recording"

            # record
            t0 = time.monotonic()
            async with http.post(url, json={"action": "start"}, headers=hub_auth) as r:
                assert r.status == 201, await r.text()
                started = (await r.json())["recording"]
            assert started["state"] == "recording"
            async with http.post(url, json={"action": "start"}, headers=hub_auth) as r:
                assert r.status == 409 and (await r.json())["error"] == "already_recording"
            await asyncio.sleep(3.5)
            async with http.get(f"{srv.url}/api/meetings/demo/recordings", headers=hub_auth) as r:
                listing = await r.json()
            assert listing["recording"] == started["id"]
            assert listing["recordings"][0]["live"]["video_frames"] > 0
            async with http.get(f"{srv.url}{started['file']}", headers=hub_auth) as r:
                assert r.status == 409 and (await r.json())["error"] == "recording_in_progress"
            async with http.post(url, json={"action": "stop"}, headers=hub_auth) as r:
                assert r.status == 200, await r.text()
                stopped = (await r.json())["recording"]
            seconds = time.monotonic() - t0
            assert stopped["state"] == "complete" and stopped["error"] is None and stopped["dropped"] == 0

            # listed with the meeting, in storage
            async with http.get(f"{srv.url}/api/meetings/demo/recordings", headers=hub_auth) as r:
                assert r.status == 200
                listing = await r.json()
            assert listing["recording"] is None
            (rec,) = listing["recordings"]
            assert rec["id"] == started["id"] and rec["state"] == "complete"
            assert rec["duration_s"] == pytest.approx(seconds, rel=0.25)
            assert rec["frames"] == pytest.approx(FPS * seconds, rel=0.25)
            row = srv.storage._conn.execute("SELECT meeting_id, path, bytes, frames FROM recordings").fetchone()
            assert row[0] == "demo" and row[1].startswith("recordings/demo/") and row[1].endswith(".webm")
            assert (srv.settings.data_dir / row[1]).stat().st_size == row[2] == rec["bytes"] > 0
            events = [e.kind for e in srv.storage.list_events("demo")]
            assert "recording_started" in events and "recording_stopped" in events
            async with http.get(f"{srv.url}/api/meetings/demo/recordings", headers=other) as r:
                assert r.status == 403
            async with http.get(f"{srv.url}/api/meetings/nowhere/recordings",
                                headers={"Authorization": f"Bearer {srv.token('hub', 'hub', meeting='nowhere')}"}) as r:
                assert r.status == 404 and (await r.json())["error"] == "meeting_not_found"

            # download
            async with http.get(f"{srv.url}{rec['file']}", headers=site_auth) as r:
                assert r.status == 403
            async with http.get(f"{srv.url}/api/recordings/999/file", headers=hub_auth) as r:
                assert r.status == 404 and (await r.json())["error"] == "recording_not_found"
            async with http.get(f"{srv.url}{rec['file']}", headers=hub_auth) as r:
                assert r.status == 200
                assert r.headers["Content-Type"] == "video/webm"
                assert r.headers["Content-Disposition"] == f'attachment; filename="{rec["filename"]}"'
                body = await r.read()
            assert len(body) == rec["bytes"]
            (tmp_path / "downloaded.webm").write_bytes(body)
            _check_recording(probe(tmp_path / "downloaded.webm"), seconds, {(320, 240)})
        finally:
            await _close(pub)


@pytest.mark.slow
async def test_server_shutdown_finishes_the_recording(api_server):
    srv = api_server
    pub = await _start(srv, "hub", "hub")
    try:
        assert await _wait(lambda: _flowing(srv, pub), 10)
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{srv.url}/api/meetings/demo/recording", json={"action": "start"},
                                 headers={"Authorization": f"Bearer {srv.token('op', 'operator')}"}) as r:
                assert r.status == 201
                rec_id = (await r.json())["recording"]["id"]
        await asyncio.sleep(2.0)
        await srv.server.close()  # shutdown with the recording running
        rec = srv.server.app[RECORDINGS_KEY].store.get(rec_id)
        assert rec.stopped_at is not None and rec.duration_s and rec.frames > 0
        info = probe(srv.settings.data_dir / rec.path)
        assert info.decoded == len(info.video_pts) == rec.frames and info.log == []
        assert info.duration == pytest.approx(rec.duration_s, abs=0.1)
    finally:
        await _close(pub)


async def test_unfinished_recording_is_marked_interrupted_at_start(tmp_path):
    """A row left open by a crash is closed when the service starts, keeping what was written."""
    storage = Storage(tmp_path / "hoinghi.db")
    storage.ensure_demo()
    tokens = TokenService(tmp_path / "secret.key")
    app = aiohttp.web.Application()
    service = setup_routes(app, storage, tokens, type("Sig", (), {"rooms": {}})())
    (tmp_path / "recordings" / "demo").mkdir(parents=True)
    (tmp_path / "recordings" / "demo" / "x.webm").write_bytes(b"\x1a\x45\xdf\xa3" + bytes(100))
    rec_id = service.store.add("demo", "recordings/demo/x.webm", time.time() - 60)
    app2 = aiohttp.web.Application()
    service2 = setup_routes(app2, storage, tokens, type("Sig", (), {"rooms": {}})())
    rec = service2.store.get(rec_id)
    assert rec.stopped_at is not None and rec.bytes == 104 and rec.duration_s is None
    assert service2.describe(rec)["state"] == "interrupted"
    assert setup_routes(app2, storage, tokens, None) is service2 is app2[RECORDINGS_KEY]
    storage.close()
