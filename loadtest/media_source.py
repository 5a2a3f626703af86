"""Pre-encoded synthetic media for load tests: real VP8 simulcast and Opus, encoded once.

Why: a rehearsal of a 164-site meeting needs sites whose video a real decoder can show and
whose frames can be identified after the SFU forwarded them, and whose audio carries real
RFC 6464 levels (the server's speaker detection reads them). Encoding per site at run time
would cost more CPU than the server under test, so everything is encoded ONCE per parameter
set, packetized once, cached on disk, and shared by every synthetic site in the process; per
packet a sender only writes an RTP header (seq/ts/SSRC/PictureID/TL0PICIDX) and protects it.

Public API (stable; loadtest/locustfile.py and the rehearsal tool code against it)
----------------------------------------------------------------------------------

``SyntheticMedia.load(cache_dir=None, *, fps=20, seconds=10.0, label="hoinghi", variant=0,
audio_seed=0, keyframe_interval=2.5, key_step=0.5, layers=DEFAULT_LAYERS) -> SyntheticMedia``
    Encode (first time: ~35 s for the default set on this 2-core VM) or load from
    ``cache_dir`` (default ``$HOINGHI_CACHE`` or ``~/.cache/hoinghi``; keyed by every
    parameter, written atomically, so concurrent processes are safe). Loading a cached set
    takes tens of ms. One instance is shared by any number of senders; each sender starts
    at its own place in the loop (``seed``), so sites neither look nor sound in step. More
    ``audio_seed`` values give other voices (another cache entry each).
    Keyframes: every ``keyframe_interval`` (2.5 s, rounded to 3 s: a multiple of the 4-frame
    temporal pattern) in 6 encodings ("phases") whose keyframes are staggered by ``key_step``
    (0.5 s): a keyframe request is met by switching to the phase whose keyframe comes first,
    at that keyframe. Every layer is VP8 L1T3 like Chrome's (``temporal_layers=3``; TIDs
    0, 2, 1, 2; ``EncodedFrame.tid``), so an SFU can forward it at 1/4, 1/2 or the full
    frame rate; ``temporal_layers=1`` encodes without temporal layers.
    ``media.layers``: list of ``LayerMedia`` lowest first (rid ``q`` 320x180 ~150 kbit/s,
    ``h`` 640x360 ~500 kbit/s, ``f`` 1280x720 ~1.5 Mbit/s). ``media.loop_frames``: frames in
    the loop (``fps * seconds``). ``media.audio``: ``AudioMedia`` (20 ms Opus packets with
    their audio level, plus a silence packet).

    The picture: moving shapes, the ``label`` and the frame number in text, and a stamp:
    a band of 2 x 16 black/white cells at the bottom of the frame carrying 32 bits =
    16-bit loop frame index, 8-bit ``variant``, 8-bit CRC-8, XORed with a fixed mask. It
    survives VP8 at 180p.
    ``read_stamp(gray: np.ndarray) -> Stamp | None`` reads it back (``Stamp.frame``,
    ``Stamp.variant``); ``None`` when the checksum fails.

``FrameClock`` (``loadtest.media_source``)
    When a site's frame is scheduled: ``clock.send_time(n)`` for the absolute frame number
    ``n`` (monotonic seconds), ``clock.frame_for(loop_index, now)`` maps a stamp's loop
    index back to the latest absolute frame number with that index sent at or before
    ``now``. ``clock.to_dict()`` / ``FrameClock.from_dict(d)`` carry it across processes on
    the same host (CLOCK_MONOTONIC is host-wide). ``CLOCKS: dict[str, FrameClock]`` is the
    process-wide registry, keyed by site id, that senders fill and measuring receivers read.

``TalkSchedule(intervals=[(start_s, end_s), ...] | None, talking=True)``
    When a site's microphone carries speech (relative to the site's start); outside, it
    sends encoded silence (level 127). ``TalkSchedule.silent()``, ``TalkSchedule.always()``,
    ``TalkSchedule.random(seed, talk_fraction=0.2, period=30.0)``; ``schedule.talking``
    can also be flipped at run time.

In loadtest/rawpeer.py + loadtest/media_sender.py (built on this module)
    ``RawPeer(name, media=SyntheticMedia, simulcast=True, talk=TalkSchedule, site_id=None,
    seed=None, read_stamps=None, ...)`` and ``HoinghiSite(http, url, token, name, <same>)``:
    offers like a browser (a=rid q/h/f send, a=simulcast:send q;h;f, mid/rid/repaired-rid
    extmaps, no a=ssrc), then ``await peer.start_media(pacer=None)`` hands its sources to
    the loop's shared ``MediaPacer`` (one 5 ms timer for every site of the process). Each
    layer has its own SSRC + RTX SSRC, carries mid/rid on its first 100 packets, is paced at
    2.5x its bitrate, answers NACK with RTX and PLI/FIR with a keyframe within
    ``media.key_step`` frames (0.5 s), and stops/resumes on ``publish_layers``
    (``HoinghiSite.publish_layers`` keeps the last list). ``simulcast=False`` with ``media``
    sends one encoding (the top layer) on aiortc's SSRC. ``HoinghiSite`` takes ``site_id``
    from ``joined`` and registers the camera's clock in ``CLOCKS`` when sending starts.
    ``peer.simulcast_source``: ``.layers[i]`` (``rid``, ``ssrc``, ``active``, ``packets``,
    ``bytes``, ``frames``, ``keyframes``, ``keyframe_requests``, ``key_delay_frames``,
    ``nacked``, ``retransmitted``), ``.clock``, ``.next_frame``, ``.stats() -> dict``.
    ``peer.audio_source``: ``OpusLoopSource`` (``packets``, ``talking_packets``, ``talk``).
    With ``media`` the peer's ``Receiver`` skips the fake send stamps (``read_stamps``).
    Without ``media`` the fake-payload path (VideoSource/AudioSource + Pacer) is unchanged.

In loadtest/measure.py
    ``MeasuringReceiver(peer, sample=2, clocks=None)`` (create it before the peer
    negotiates): decodes the VP8 of ``sample`` video slots (an int = slots 0..N-1, or a list
    of slot indexes) in one worker thread, reads stamps, asks for a keyframe (PLI) after a
    loss as a browser does. ``meter.flush()`` waits for queued decodes; ``meter.report()``
    -> ``{"slots": [{index, mid, site_id, sites, packets, rtx_packets, kbps, jitter_ms,
    frames, fps, resolutions {"320x180": n, ...}, layer_changes, latency_ms {n, p50, p95,
    max, min}, freezes, frozen_s, longest_freeze_s, skipped, repeated, out_of_order, stamp_errors,
    no_clock, gaps, frames_dropped, decode_errors, plis}, ...], "total": {frames,
    latency_ms, freezes, frozen_s, skipped, stamp_errors, decode_backlog_dropped}, "rtp":
    {packets, rtx_packets, bytes, expected, lost, bad_srtp}}``; ``meter.close()`` at the end.
    ``meter.meters[i].numbers``: the absolute frame numbers read on slot i, in order.

Costs (loadtest/bench_synthetic.py, docs/benchmarks.md): loading a cached set ~50 ms;
sending ~9 us of CPU per packet including SRTP and sendto (~0.3 % of a core per site
sending all three layers and audio).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import struct
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

logger = logging.getLogger(__name__)

#: Bump when the picture, the stamp, the encoder settings or the cache layout change.
FORMAT_VERSION = 4
VP8_MAX_CHUNK = 1100  # VP8 bytes per RTP packet: + descriptor + header + extensions < 1200
VP8_DESCRIPTOR = 6  # X | I (15-bit PictureID) | L (TL0PICIDX) | T (TID, Y)
#: Chrome sends every simulcast layer as VP8 L1T3: temporal ids 0, 2, 1, 2 repeating, the base
#: layer at 1/4 of the frame rate carrying ~40 % of the bits, 0+1 at 1/2 ~60 % (libwebrtc's
#: split). The synthetic sites do the same, so the SFU has the same steps to allocate with.
TEMPORAL_PATTERN = (0, 2, 1, 2)
TEMPORAL_SHARES = (0.4, 0.6, 1.0)  # cumulative share of the layer's bit rate per temporal id
OPUS_FRAME = 960  # 20 ms at 48 kHz
STAMP_COLS = 16
STAMP_ROWS = 2
STAMP_BAND = 0.15  # fraction of the frame height the stamp band takes, at the bottom
STAMP_MASK = 0x5AA53CC3  # XORed over the bits: frame 0 is not an all-black band
CACHE_ENV = "HOINGHI_CACHE"


@dataclass(frozen=True)
class LayerSpec:
    rid: str
    width: int
    height: int
    bitrate: int  # bit/s the encoder aims at


DEFAULT_LAYERS: tuple[LayerSpec, ...] = (
    LayerSpec("q", 320, 180, 150_000),
    LayerSpec("h", 640, 360, 500_000),
    LayerSpec("f", 1280, 720, 1_500_000),
)


# --------------------------------------------------------------------------- the stamp


def crc8(data: bytes) -> int:
    """CRC-8 (polynomial 0x07): a corrupted stamp is refused rather than misread."""
    crc = 0
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def stamp_bits(frame: int, variant: int) -> list[int]:
    body = bytes([(frame >> 8) & 0xFF, frame & 0xFF, variant & 0xFF])
    value = int.from_bytes(body + bytes([crc8(body)]), "big") ^ STAMP_MASK
    return [(value >> (31 - i)) & 1 for i in range(STAMP_ROWS * STAMP_COLS)]


def _cell_boxes(width: int, height: int) -> list[tuple[int, int, int, int]]:
    """(x0, y0, x1, y1) of each stamp cell, row-major, MSB first, for a frame size."""
    band = int(round(height * STAMP_BAND))
    top = height - band
    boxes = []
    for r in range(STAMP_ROWS):
        y0 = top + (band * r) // STAMP_ROWS
        y1 = top + (band * (r + 1)) // STAMP_ROWS
        for c in range(STAMP_COLS):
            x0 = (width * c) // STAMP_COLS
            x1 = (width * (c + 1)) // STAMP_COLS
            boxes.append((x0, y0, x1, y1))
    return boxes


@dataclass(frozen=True)
class Stamp:
    frame: int  # loop frame index
    variant: int


def luma(picture) -> np.ndarray:
    """The Y plane of a decoded yuv420p av.VideoFrame as a (height, width) view, no copy.

    What read_stamp needs; VideoFrame.to_ndarray(format="gray") goes through swscale and
    costs more than decoding the picture.
    """
    plane = picture.planes[0]
    rows = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
    return rows[:, : plane.width]


def read_stamp(gray: np.ndarray) -> Optional[Stamp]:
    """Read the stamp from a decoded frame's luma plane (any layer size); None if unreadable.

    Each cell is judged by the mean of its inner half (edges blur under VP8), against the
    midpoint of the darkest and brightest cell, so a brightness shift does not matter.
    """
    height, width = gray.shape[:2]
    means = []
    for x0, y0, x1, y1 in _cell_boxes(width, height):
        dx, dy = (x1 - x0) // 4, (y1 - y0) // 4
        means.append(float(gray[y0 + dy : y1 - dy, x0 + dx : x1 - dx].mean()))
    lo, hi = min(means), max(means)
    mid = (lo + hi) / 2 if hi - lo >= 60 else 128.0
    value = 0
    for m in means:
        value = (value << 1) | (1 if m > mid else 0)
    body = (value ^ STAMP_MASK).to_bytes(4, "big")
    if crc8(body[:3]) != body[3]:
        return None
    return Stamp((body[0] << 8) | body[1], body[2])


# --------------------------------------------------------------------------- the picture


class Scene:
    """Draws frame i of the loop at one size: textured moving background, shapes, text, stamp."""

    def __init__(self, width: int, height: int, loop_frames: int, label: str, variant: int, seed: int = 7) -> None:
        self.width = width
        self.height = height
        self.loop_frames = loop_frames
        self.label = label
        self.variant = variant
        rng = np.random.default_rng(seed)
        # a texture twice the frame width, scrolled: gives the encoder real work (a flat
        # picture would encode to a fraction of the target bitrate)
        small = rng.integers(0, 256, size=(max(2, height // 8), max(2, width // 4), 3), dtype=np.uint8)
        import cv2

        tex = cv2.resize(small, (width * 2, height), interpolation=cv2.INTER_CUBIC)
        self.texture = (tex // 2 + 40).astype(np.uint8)
        self.shapes = [
            (rng.uniform(0.05, 0.2), rng.uniform(0.2, 1.0), rng.uniform(0, 2 * math.pi), tuple(int(v) for v in rng.integers(40, 255, 3)))
            for _ in range(4)
        ]

    def draw(self, i: int) -> np.ndarray:
        import cv2

        w, h = self.width, self.height
        s = w / 1280.0
        shift = int((i * 4 * s)) % w
        img = np.ascontiguousarray(self.texture[:, shift : shift + w])
        band = int(round(h * STAMP_BAND))
        t = 2 * math.pi * i / self.loop_frames
        for k, (radius, speed, phase, color) in enumerate(self.shapes):
            cx = int(w * (0.5 + 0.4 * math.sin(t * (k + 1) * speed * 2 + phase)))
            cy = int((h - band) * (0.5 + 0.35 * math.cos(t * (k + 2) * speed + phase)))
            r = max(3, int(radius * h))
            if k % 2:
                cv2.circle(img, (cx, cy), r, color, -1)
            else:
                cv2.rectangle(img, (cx - r, cy - r), (cx + r, cy + r), color, -1)
        scale = max(0.4, 1.6 * s)
        thick = max(1, int(3 * s))
        cv2.putText(img, self.label, (int(20 * s) + 2, int(70 * s) + 8), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick + 1)
        cv2.putText(img, f"#{i:05d}", (int(20 * s) + 2, int(150 * s) + 12), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 255, 255), thick + 1)
        img[h - band :, :] = 0
        for bit, (x0, y0, x1, y1) in zip(stamp_bits(i, self.variant), _cell_boxes(w, h)):
            if bit:
                img[y0:y1, x0:x1] = 255
        return img


# --------------------------------------------------------------------------- encoded media


@dataclass
class EncodedFrame:
    key: bool
    payloads: tuple[bytes, ...]  # RTP payloads: VP8 descriptor (PictureID/TL0PICIDX to fill) + VP8 bytes
    size: int  # bytes of VP8 bitstream
    tid: int = 0  # VP8 temporal layer id (0: the base layer; keyframes are always 0)


@dataclass
class LayerMedia:
    """One simulcast layer: `phases` encodings of the same loop, keyframes at staggered frames.

    Phase p has a keyframe every `gop` frames starting at frame p * key_step, so whatever
    frame a sender is at, some phase has a keyframe within `key_step` frames: a PLI is
    answered by switching to that phase at its keyframe (each phase is self-consistent:
    its delta frames only reference its own earlier frames).
    """

    spec: LayerSpec
    phases: list[list[EncodedFrame]]
    key_phases: list[tuple[int, ...]] = field(default_factory=list)  # loop index -> phases with a keyframe there

    def __post_init__(self) -> None:
        n = len(self.phases[0])
        self.key_phases = [tuple(p for p, frames in enumerate(self.phases) if frames[i].key) for i in range(n)]

    @property
    def rid(self) -> str:
        return self.spec.rid

    def bitrate(self, fps: float) -> float:
        """Measured average of phase 0, bit/s."""
        frames = self.phases[0]
        return sum(f.size for f in frames) * 8 * fps / len(frames)


@dataclass
class AudioMedia:
    """A loop of 20 ms Opus packets of speech-like sound, each with its RFC 6464 level."""

    packets: list[bytes]
    levels: list[int]  # 0 (loud) .. 127 (silent), -dBov
    silence: bytes
    silence_level: int = 127


@dataclass
class SyntheticMedia:
    fps: int
    loop_frames: int
    key_step: int
    gop: int
    label: str
    variant: int
    layers: list[LayerMedia]
    audio: AudioMedia
    key: str = ""  # cache key
    loaded_from_cache: bool = False

    @property
    def rids(self) -> list[str]:
        return [layer.rid for layer in self.layers]

    @classmethod
    def load(
        cls,
        cache_dir: str | os.PathLike | None = None,
        *,
        fps: int = 20,
        seconds: float = 10.0,
        label: str = "hoinghi",
        variant: int = 0,
        audio_seed: int = 0,
        keyframe_interval: float = 2.5,
        key_step: float = 0.5,
        layers: Sequence[LayerSpec] = DEFAULT_LAYERS,
        temporal_layers: int = 3,
    ) -> "SyntheticMedia":
        """The encoded media for these parameters: from the cache, else encoded and cached.

        With `temporal_layers` 3 (the default, as Chrome) each layer is VP8 L1T3; the
        keyframe interval is then rounded to a multiple of the 4-frame pattern, so every
        keyframe is a base-layer frame (a keyframe a thinned stream dropped would be lost)."""
        if 90000 % fps:
            raise ValueError("fps must divide 90000 (RTP timestamps stay exact)")
        if temporal_layers not in (1, 3):
            raise ValueError("temporal_layers must be 1 or 3 (VP8 L1T3, as Chrome sends)")
        step = max(1, int(round(key_step * fps)))
        unit = math.lcm(step, len(TEMPORAL_PATTERN)) if temporal_layers > 1 else step
        gop = max(unit, int(keyframe_interval * fps / unit + 0.5) * unit)
        loop = int(round(seconds * fps / gop)) * gop or gop
        params = {
            "temporal": temporal_layers,
            "v": FORMAT_VERSION,
            "fps": fps,
            "loop": loop,
            "step": step,
            "gop": gop,
            "label": label,
            "variant": variant,
            "audio_seed": audio_seed,
            "layers": [[l.rid, l.width, l.height, l.bitrate] for l in layers],
        }
        key = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
        directory = Path(cache_dir or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "hoinghi")
        path = directory / f"synthetic-{key}.bin"
        if path.exists():
            try:
                media = _read_cache(path, params)
                media.key = key
                media.loaded_from_cache = True
                return media
            except (ValueError, KeyError, OSError) as exc:
                logger.warning("ignoring a bad media cache %s: %s", path, exc)
        t0 = time.monotonic()
        media = encode_media(params)
        media.key = key
        logger.info("encoded synthetic media %s in %.1f s", key, time.monotonic() - t0)
        directory.mkdir(parents=True, exist_ok=True)
        _write_cache(path, params, media)
        return media


# --------------------------------------------------------------------------- encoding


def _packetize(data: bytes, tid: int = 0, sync: bool = True) -> tuple[bytes, ...]:
    """Split one VP8 frame into RTP payloads of near-equal size, each with a descriptor.

    The descriptor's PictureID (bytes 2-3) and TL0PICIDX (byte 4) are zero here; the sender
    writes them per packet. Byte 5 carries the temporal id and Y (the frame depends on the
    base layer only: a receiver may start forwarding this temporal layer here).
    """
    tbyte = (tid << 6) | (0x20 if sync else 0)
    n = max(1, -(-len(data) // VP8_MAX_CHUNK))
    size = -(-len(data) // n)
    out = []
    for k in range(n):
        chunk = data[k * size : (k + 1) * size]
        out.append(bytes([0x90 if k == 0 else 0x80, 0xE0, 0x80, 0x00, 0x00, tbyte]) + chunk)
    return tuple(out)


def _encode_layer(spec: LayerSpec, params: dict) -> LayerMedia:
    import av

    fps, loop, step, gop = params["fps"], params["loop"], params["step"], params["gop"]
    scene = Scene(spec.width, spec.height, loop, params["label"], params["variant"])
    yuv = []
    for i in range(loop):
        frame = av.VideoFrame.from_ndarray(scene.draw(i), format="bgr24").reformat(format="yuv420p")
        yuv.append(frame)
    phases = []
    for p in range(gop // step):
        start = p * step
        ctx = av.CodecContext.create("libvpx", "w")
        ctx.width, ctx.height = spec.width, spec.height
        ctx.pix_fmt = "yuv420p"
        ctx.time_base = Fraction(1, fps)
        ctx.framerate = fps
        ctx.bit_rate = spec.bitrate
        ctx.gop_size = gop
        ctx.options = {
            "deadline": "realtime",
            "cpu-used": "8",
            "lag-in-frames": "0",
            "auto-alt-ref": "0",
            "error-resilient": "1",
            "static-thresh": "0",
            "max-intra-rate": "300",
            "undershoot-pct": "95",
            "overshoot-pct": "5",
            "buf-initial-sz": "500",
            "buf-optimal-sz": "600",
            "buf-sz": "1000",
        }
        temporal = params.get("temporal", 1) > 1
        if temporal:
            # libvpx's 3-layer pattern (ffmpeg's ts_layering_mode 3): TIDs 0,2,1,2; TID 0
            # references only TID 0, TID 1 the last TID 0, TID 2 the frame before it, so a
            # stream thinned to TIDs <= t decodes to the same pictures (tested)
            kbps = ",".join(str(int(spec.bitrate * share / 1000)) for share in TEMPORAL_SHARES)
            ctx.options["ts-parameters"] = (
                f"ts_number_layers=3:ts_target_bitrate={kbps}:ts_rate_decimator=4,2,1:"
                f"ts_periodicity=4:ts_layer_id=0,2,1,2:ts_layering_mode=3"
            )
        frames: list[Optional[EncodedFrame]] = [None] * loop
        order = [(start + k) % loop for k in range(loop)]
        # one extra lap first (not kept) so rate control has settled when the kept lap starts;
        # the kept lap begins at a forced keyframe, so nothing refers back into the warm-up
        pts = 0
        for lap in range(2):
            for k, i in enumerate(order):
                f = yuv[i]
                f.pts = pts
                pts += 1
                f.pict_type = av.video.frame.PictureType.I if k % gop == 0 else av.video.frame.PictureType.NONE
                for packet in ctx.encode(f):
                    if lap == 1:
                        data = bytes(packet)
                        pos = (lap * loop + k) % len(TEMPORAL_PATTERN)
                        tid = TEMPORAL_PATTERN[pos] if temporal else 0
                        if packet.is_keyframe and tid:
                            raise RuntimeError("a keyframe off the temporal base layer")
                        # the second TID 2 frame of the pattern references the TID 1 frame
                        sync = not temporal or pos != 3
                        frames[i] = EncodedFrame(bool(packet.is_keyframe), _packetize(data, tid, sync), len(data), tid)
        for packet in ctx.encode(None):
            pass
        if any(f is None for f in frames):
            raise RuntimeError("the VP8 encoder did not return one packet per frame (lag-in-frames?)")
        if not frames[start].key:  # type: ignore[union-attr]
            raise RuntimeError("the VP8 encoder ignored a forced keyframe")
        phases.append(frames)
    return LayerMedia(spec, phases)  # type: ignore[arg-type]


def speech_pcm(seconds: float, seed: int, rate: int = 48000) -> np.ndarray:
    """Speech-like mono float PCM: voiced syllables (harmonics with a gliding pitch, formant
    colouring, a little breath noise) in words and phrases separated by pauses."""
    rng = np.random.default_rng(1000 + seed)
    n = int(seconds * rate)
    out = np.zeros(n, dtype=np.float64)
    pos = int(rng.uniform(0.1, 0.4) * rate)
    base_f0 = rng.uniform(95, 220)
    while pos < n:
        for _ in range(int(rng.integers(2, 7))):  # syllables in a word
            dur = int(rng.uniform(0.09, 0.28) * rate)
            if pos + dur >= n:
                break
            t = np.arange(dur) / rate
            f0 = base_f0 * (1 + 0.12 * np.sin(2 * np.pi * rng.uniform(1, 4) * t + rng.uniform(0, 6)))
            phase = 2 * np.pi * np.cumsum(f0) / rate
            formant = rng.uniform(400, 900)
            voiced = sum(np.sin(h * phase) / h * np.exp(-((h * f0 - formant) ** 2) / (2 * 350.0**2) * 0.5) for h in range(1, 12))
            env = np.sin(np.pi * np.arange(dur) / dur) ** 1.5
            amp = rng.uniform(0.15, 0.45)
            out[pos : pos + dur] += amp * env * (voiced + 0.05 * rng.standard_normal(dur))
            pos += dur + int(rng.uniform(0.02, 0.08) * rate)
        pos += int((rng.uniform(0.3, 0.9) if rng.random() < 0.3 else rng.uniform(0.08, 0.2)) * rate)
    out += 0.0005 * rng.standard_normal(n)  # room noise, about -66 dBov
    return np.clip(out, -1.0, 1.0)


def audio_level(frame: np.ndarray) -> int:
    """RFC 6464 level of one frame of float PCM: -dBov, 0 (loudest) .. 127 (silence)."""
    rms = float(np.sqrt(np.mean(np.square(frame)))) if len(frame) else 0.0
    if rms <= 1e-7:
        return 127
    return int(min(127, max(0, round(-20 * math.log10(rms)))))


def _encode_opus(pcm: np.ndarray) -> list[bytes]:
    import av

    ctx = av.CodecContext.create("libopus", "w")
    ctx.sample_rate = 48000
    ctx.layout = "mono"
    ctx.format = "s16"
    ctx.bit_rate = 32000
    ctx.time_base = Fraction(1, 48000)
    ctx.options = {"frame_duration": "20", "application": "voip"}
    samples = (pcm * 32767).astype(np.int16)
    packets: list[bytes] = []
    for k in range(len(samples) // OPUS_FRAME):
        frame = av.AudioFrame.from_ndarray(samples[None, k * OPUS_FRAME : (k + 1) * OPUS_FRAME], format="s16", layout="mono")
        frame.sample_rate = 48000
        frame.pts = k * OPUS_FRAME
        packets += [bytes(p) for p in ctx.encode(frame)]
    packets += [bytes(p) for p in ctx.encode(None)]
    return packets


def _encode_audio(params: dict) -> AudioMedia:
    seconds = params["loop"] / params["fps"]
    pcm = speech_pcm(seconds, params["audio_seed"])
    frames = len(pcm) // OPUS_FRAME
    levels = [audio_level(pcm[k * OPUS_FRAME : (k + 1) * OPUS_FRAME]) for k in range(frames)]
    packets = _encode_opus(pcm)[:frames]
    while len(packets) < frames:  # the encoder's look-ahead may hold the last frame back
        packets.append(packets[-1])
    silence = _encode_opus(np.zeros(OPUS_FRAME * 10))[5]
    return AudioMedia(packets, levels, silence)


def encode_media(params: dict) -> SyntheticMedia:
    layers = [_encode_layer(LayerSpec(*spec), params) for spec in params["layers"]]
    return SyntheticMedia(
        params["fps"], params["loop"], params["step"], params["gop"], params["label"], params["variant"], layers, _encode_audio(params)
    )


# --------------------------------------------------------------------------- cache file
#
# One file: b"HOINGHI1", a 4-byte big-endian length, a JSON index, then every payload back to
# back. No pickle: a cache file is data, never code.

_MAGIC = b"HOINGHI1"


def _write_cache(path: Path, params: dict, media: SyntheticMedia) -> None:
    blobs: list[bytes] = []
    layers = []
    for layer in media.layers:
        phases = []
        for frames in layer.phases:
            phases.append([[int(f.key), f.size, [len(p) for p in f.payloads], f.tid] for f in frames])
            for f in frames:
                blobs.extend(f.payloads)
        layers.append(phases)
    a = media.audio
    blobs.extend(a.packets)
    blobs.append(a.silence)
    index = {"params": params, "layers": layers, "audio": [len(p) for p in a.packets], "levels": a.levels, "silence": len(a.silence)}
    head = json.dumps(index).encode()
    tmp = path.with_suffix(f".tmp{os.getpid()}{random.getrandbits(24)}")
    with open(tmp, "wb") as fh:
        fh.write(_MAGIC + struct.pack("!I", len(head)) + head)
        for b in blobs:
            fh.write(b)
    os.replace(tmp, path)  # atomic: a concurrent reader sees the old file or the whole new one


def _read_cache(path: Path, params: dict) -> SyntheticMedia:
    data = path.read_bytes()
    if data[:8] != _MAGIC:
        raise ValueError("not a hoinghi media cache")
    (n,) = struct.unpack_from("!I", data, 8)
    index = json.loads(data[12 : 12 + n])
    if index["params"] != params:
        raise ValueError("cache parameters differ")
    pos = 12 + n

    def take(size: int) -> bytes:
        nonlocal pos
        if pos + size > len(data):
            raise ValueError("truncated media cache")
        b = data[pos : pos + size]
        pos += size
        return b

    layers = []
    for spec, phases in zip(params["layers"], index["layers"]):
        decoded = [[EncodedFrame(bool(k), tuple(take(s) for s in sizes), size, tid) for k, size, sizes, tid in frames] for frames in phases]
        layers.append(LayerMedia(LayerSpec(*spec), decoded))
    packets = [take(s) for s in index["audio"]]
    silence = take(index["silence"])
    audio = AudioMedia(packets, index["levels"], silence)
    return SyntheticMedia(params["fps"], params["loop"], params["step"], params["gop"], params["label"], params["variant"], layers, audio)


# --------------------------------------------------------------------------- timing


@dataclass
class FrameClock:
    """When a site's frames are scheduled, so a receiver can turn a stamp into a latency.

    Absolute frame n (0, 1, ... since the site started sending) is scheduled at
    ``start + n / fps`` (monotonic seconds) and shows loop index ``(n + offset) % loop``.
    """

    start: float
    fps: int
    loop: int
    offset: int = 0
    variant: int = 0

    def send_time(self, n: int) -> float:
        return self.start + n / self.fps

    def frame_for(self, loop_index: int, now: float) -> int:
        """The latest absolute frame number showing `loop_index` scheduled at or before `now`."""
        due = int(math.floor((now - self.start) * self.fps + 1e-9))
        return due - ((due + self.offset - loop_index) % self.loop)

    def to_dict(self) -> dict:
        return {"start": self.start, "fps": self.fps, "loop": self.loop, "offset": self.offset, "variant": self.variant}

    @classmethod
    def from_dict(cls, d: dict) -> "FrameClock":
        return cls(float(d["start"]), int(d["fps"]), int(d["loop"]), int(d.get("offset", 0)), int(d.get("variant", 0)))


#: Process-wide registry: site id -> the clock of that site's synthetic camera.
CLOCKS: dict[str, FrameClock] = {}


class TalkSchedule:
    """When a synthetic site's microphone carries speech, relative to its start (seconds)."""

    def __init__(self, intervals: Optional[list[tuple[float, float]]] = None, talking: bool = True) -> None:
        self.intervals = intervals
        self.talking = talking  # used when there are no intervals; may be flipped at run time

    @classmethod
    def silent(cls) -> "TalkSchedule":
        return cls(None, False)

    @classmethod
    def always(cls) -> "TalkSchedule":
        return cls(None, True)

    @classmethod
    def random(cls, seed: int, talk_fraction: float = 0.2, period: float = 30.0, duration: float = 3600.0) -> "TalkSchedule":
        """Talk spells of period*talk_fraction seconds at random places in every period."""
        rng = random.Random(seed)
        spell = period * talk_fraction
        out = []
        t = 0.0
        while t < duration:
            s = t + rng.uniform(0, period - spell)
            out.append((s, s + spell))
            t += period
        return cls(out)

    def is_talking(self, t: float) -> bool:
        if self.intervals is None:
            return self.talking
        return any(a <= t < b for a, b in self.intervals)
