"""What recording costs per packet: the recorder sink on the event loop, the muxer on its thread.

    .venv/bin/python -m loadtest.bench_recording [--seconds 60] [--size 1280x720] [--fps 30]

Real VP8 (libvpx, encoded here once, client side) and Opus (libopus) are packetized into
RTP exactly as a browser does (RFC 7741 descriptor with a 15-bit PictureID, 1200-byte
payloads), parsed once with the SFU's own parse_rtp/vp8.parse_descriptor as the receive
path does, then fed through:

  1. `Consumer.write` of one subscriber slot, for scale (rewrite + history; SRTP and
     sendto excluded, the transport's send_rtp is a no-op here);
  2. `TrackRecorder.write` for video and audio: the recorder's whole event-loop cost
     (depacketizing, frame assembly, queueing), the writer thread not running;
  3. the `WebmWriter` thread alone, draining what (2) queued: av.Packet + mux + file write.

The encoded clip is repeated (with continuing seq/ts) to reach --seconds of media; every
repetition starts at a keyframe so the file written is a valid recording and is checked by
decoding its first frames.
"""

from __future__ import annotations

import argparse
import fractions
import os
import statistics
import struct
import tempfile
import time
from pathlib import Path

import av
import numpy as np

from media import vp8
from media.consumer import Consumer
from media.producer import Producer
from media.recorder import TrackRecorder, WebmWriter
from media.rtp import parse_rtp

MAX_PAYLOAD = 1200
ROUNDS = 5  # loop-side figures are the median of this many passes


class _BenchTransport:
    """What Producer/Consumer touch on a transport; nothing leaves the process."""

    participant_id = "bench"
    rtcp_ssrc = 1
    ext_kinds = [0] * 256
    rtt = 0.0

    def __init__(self) -> None:
        self.sent = 0

    def send_rtcp(self, packet: bytes) -> None:
        pass

    def send_rtp(self, packet: bytes | bytearray, *extra: object) -> None:
        self.sent += 1


def encode_vp8(frames: int, width: int, height: int, fps: int, bitrate: int) -> list[tuple[bytes, bool]]:
    enc = av.CodecContext.create("libvpx", "w")
    enc.width, enc.height, enc.pix_fmt = width, height, "yuv420p"
    enc.time_base = fractions.Fraction(1, fps)
    enc.framerate = fps
    enc.bit_rate = bitrate
    enc.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    base = np.zeros((height, width, 3), np.uint8)
    base[:, :, 1] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    rng = np.random.default_rng(1)
    out: list[tuple[bytes, bool]] = []
    for i in range(frames):
        img = base.copy()
        x = (i * 8) % width
        img[:, x : x + 16, :] = 255
        img[rng.integers(0, height, 64), rng.integers(0, width, 64)] = 200  # some detail
        frame = av.VideoFrame.from_ndarray(img, format="bgr24")
        frame.pts = i
        for p in enc.encode(frame):
            out.append((bytes(p), p.is_keyframe))
    for p in enc.encode(None):
        out.append((bytes(p), p.is_keyframe))
    return out


def encode_opus(packets: int) -> list[bytes]:
    enc = av.CodecContext.create("libopus", "w")
    enc.sample_rate, enc.layout, enc.format = 48000, "stereo", "s16"
    enc.time_base = fractions.Fraction(1, 48000)
    out: list[bytes] = []
    for i in range(packets):
        t = (np.arange(960) + i * 960) / 48000.0
        s = (np.sin(2 * np.pi * 440 * t) * 3000).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(np.stack([s, s]).T.reshape(1, -1).copy(), format="s16", layout="stereo")
        frame.sample_rate = 48000
        frame.pts = i * 960
        out.extend(bytes(p) for p in enc.encode(frame))
    return out


def rtp(pt: int, seq: int, ts: int, ssrc: int, marker: bool, payload: bytes) -> bytes:
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + payload


def vp8_packets(frame: bytes, picture_id: int) -> list[bytes]:
    """RFC 7741 payloads of one frame: X=1, S on the first, I=1 with a 15-bit PictureID."""
    out = []
    for i in range(0, len(frame), MAX_PAYLOAD):
        desc = bytes([0x90 if i == 0 else 0x80, 0x80, 0x80 | ((picture_id >> 8) & 0x7F), picture_id & 0xFF])
        out.append(desc + frame[i : i + MAX_PAYLOAD])
    return out


def build_video(encoded: list[tuple[bytes, bool]], repeats: int, fps: int, ssrc: int = 0x1111) -> list[bytes]:
    packets, seq, pid = [], 1000, 0
    step = 90000 // fps
    n = 0
    for _ in range(repeats):
        for frame, _key in encoded:
            payloads = vp8_packets(frame, pid)
            for j, payload in enumerate(payloads):
                packets.append(rtp(96, seq, 5000 + n * step, ssrc, j == len(payloads) - 1, payload))
                seq += 1
            pid = (pid + 1) & 0x7FFF
            n += 1
    return packets


def build_audio(encoded: list[bytes], count: int, ssrc: int = 0x2222) -> list[bytes]:
    return [rtp(111, 7000 + i, 9000 + i * 960, ssrc, False, encoded[i % len(encoded)]) for i in range(count)]


def parse_all(packets: list[bytes], is_vp8: bool) -> list:
    infos = []
    for p in packets:
        info = parse_rtp(p, _BenchTransport.ext_kinds)
        if is_vp8:
            vp8.parse_descriptor(info)
        info.abs24 = 0
        info.payload = memoryview(info.data)[info.payload_offset :]
        infos.append(info)
    return infos


def per_packet(fn, infos, stream) -> float:
    t0 = time.perf_counter()
    now = time.monotonic()
    for info in infos:
        fn(info, stream, now)
    return (time.perf_counter() - t0) / len(infos) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="media fed through the recorder")
    ap.add_argument("--size", default="1280x720")
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--bitrate", type=int, default=1_500_000)
    ap.add_argument("--keep", action="store_true", help="keep the WebM file written")
    args = ap.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    clip_frames = args.fps * 5
    encoded = encode_vp8(clip_frames, width, height, args.fps, args.bitrate)
    repeats = max(1, round(args.seconds * args.fps / len(encoded)))
    video = build_video(encoded, repeats, args.fps)
    audio = build_audio(encode_opus(250), int(len(encoded) * repeats / args.fps * 50))
    vinfos, ainfos = parse_all(video, True), parse_all(audio, False)
    media_s = len(encoded) * repeats / args.fps

    transport = _BenchTransport()
    vprod = Producer(transport, "video", "1", "video/vp8", 90000, 96, None, set(), [])
    aprod = Producer(transport, "audio", "0", "audio/opus", 48000, 111, None, set(), [])
    vstream, astream = vprod.streams[0], aprod.streams[0]

    rounds = []
    for _ in range(ROUNDS):
        # 1. one subscriber slot, for scale
        consumer = Consumer(transport, "video", 0, "2", 0x3333, 96, 90000, None, None, nack=True)
        consumer.source = vstream
        consumer_us = per_packet(consumer.write, vinfos, vstream)
        # 2. the recorder on the event loop (writer thread not yet running: pure loop cost)
        path = Path(tempfile.mkdtemp(prefix="hoinghi-recbench-")) / "bench.webm"
        writer = WebmWriter(path, queue_max=1 << 30)
        origin = time.monotonic()
        vrec, arec = TrackRecorder("video", writer, origin), TrackRecorder("audio", writer, origin)
        vrec.set_target(vstream)
        arec.set_target(astream)
        video_us = per_packet(vrec.write, vinfos, vstream)
        audio_us = per_packet(arec.write, ainfos, astream)
        rounds.append((consumer_us, video_us, audio_us, writer, path))
        assert vrec.frames == len(encoded) * repeats, (vrec.frames, vrec.stats())
    consumer_us, video_us, audio_us = (statistics.median(r[i] for r in rounds) for i in range(3))
    for r in rounds[:-1]:
        r[3].close()  # never started: nothing written
        os.rmdir(r[4].parent)
    writer, path = rounds[-1][3], rounds[-1][4]
    items = writer.backlog

    # 3. the writer thread alone
    t0 = time.perf_counter()
    writer.start()
    stats = writer.close()
    writer_s = time.perf_counter() - t0
    with av.open(str(path)) as c:
        decoded = sum(1 for _ in zip(range(30), c.decode(video=0)))
    size = path.stat().st_size

    vpps = len(vinfos) / media_s
    apps = len(ainfos) / media_s
    loop_cpu = (video_us * vpps + audio_us * apps) / 1e4  # % of one core
    writer_cpu = writer_s / media_s * 100
    kbps = sum(len(p) for p in video) * 8 / media_s / 1000
    print(f"media: {width}x{height} {args.fps} fps VP8 {kbps:.0f} kbit/s + Opus 20 ms, "
          f"{media_s:.0f} s: {len(vinfos)} video packets ({vpps:.0f}/s), {len(ainfos)} audio packets ({apps:.0f}/s)")
    print(f"(median of {ROUNDS} passes)")
    print(f"subscriber slot Consumer.write (no SRTP/sendto), video: {consumer_us:6.2f} us/packet")
    print(f"recorder sink on the event loop, video:            {video_us:6.2f} us/packet")
    print(f"recorder sink on the event loop, audio:            {audio_us:6.2f} us/packet")
    print(f"writer thread (av mux + file), per queued item:     {writer_s / max(1, items) * 1e6:6.2f} us "
          f"({items} items = {stats.video_frames} frames + {stats.audio_packets} audio packets)")
    print(f"writer thread, per RTP packet recorded:             {writer_s / (len(vinfos) + len(ainfos)) * 1e6:6.2f} us")
    print(f"CPU for one recording at this rate: event loop {loop_cpu:.2f} % of a core, writer thread {writer_cpu:.2f} %")
    print(f"file: {size / 1e6:.1f} MB, {stats.duration_s:.1f} s, {stats.video_frames} frames, "
          f"queue drops {stats.dropped}, first frames decode: {decoded}/30, errors: {stats.error}")
    if args.keep:
        print(f"kept {path}")
    else:
        os.unlink(path)
        os.rmdir(path.parent)


if __name__ == "__main__":
    main()
