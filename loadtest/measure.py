"""A measuring receiver: decode a sample of a raw peer's video slots and read the stamps.

What a viewer would notice, measured outside the server: for each sampled slot the VP8 RTP
the peer receives is depacketized (RFC 7741), decoded with libvpx (PyAV) in one worker
thread per receiver, and the stamp of loadtest/media_source.py is read from every picture.
With the sending site's `FrameClock` (media_source.CLOCKS, filled by the senders of the same
process, or clocks passed in) a stamp becomes a glass-to-glass latency: decode time minus the
frame's scheduled capture time. Also counted: frames per second, which resolutions (layers)
arrive, frozen intervals (no new picture for > 500 ms while the slot shows the same site),
skipped frame numbers, repeated ones (a layer switch can show the same moment twice: the
old layer's frame, then the new layer's keyframe of the same capture time), frames that
arrive out of order, unreadable stamps.

Like a browser, a slot that lost part of a frame stops feeding its decoder until the next
keyframe and asks for one (PLI, at most once a second).

Usage (create before the peer negotiates: the transport binds its RTP callback when DTLS
comes up)::

    site = HoinghiSite(http, url, token, "viewer", publish_video=False, video_slots=9, ...)
    meter = MeasuringReceiver(site, sample=2)
    await site.join(); await site.negotiate()
    ...
    report = meter.report()   # dict, see `MeasuringReceiver.report`
    meter.close()

Slots are rewritten by the SFU (one continuous seq/ts per slot whatever the source); which
site a slot shows comes from the peer's `slots` attribute (HoinghiSite keeps the last
`slots` message), read when each frame completes.
"""

from __future__ import annotations

import logging
import threading
import time
from array import array
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Mapping, Optional, Union

from media import rtcp

from .media_source import CLOCKS, FrameClock, luma, read_stamp

logger = logging.getLogger(__name__)

FREEZE_S = 0.5
PLI_INTERVAL = 1.0
MAX_PENDING_FRAMES = 64


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, int(round(q * (len(s) - 1)))))
    return s[k]


def parse_answer_slots(answer_sdp: str) -> list[tuple[str, int, Optional[int]]]:
    """(mid, ssrc, rtx ssrc) of every video m-section the server sends on, in slot order."""
    out = []
    for sec in answer_sdp.split("\r\nm=")[1:]:
        lines = sec.split("\r\n")
        if not lines[0].startswith("video") or "a=sendonly" not in lines:
            continue
        mid = next((l[6:] for l in lines if l.startswith("a=mid:")), "")
        ssrcs: list[int] = []
        fid: dict[int, int] = {}
        for l in lines:
            if l.startswith("a=ssrc:"):
                v = int(l[7:].split()[0])
                if v not in ssrcs:
                    ssrcs.append(v)
            elif l.startswith("a=ssrc-group:FID "):
                a, b = l[17:].split()[:2]
                fid[int(a)] = int(b)
        media = next((s for s in ssrcs if s not in fid.values()), None)
        if media is not None:
            out.append((mid, media, fid.get(media)))
    return out


class SlotMeter:
    """Depacketizer, decoder and figures of one sampled slot."""

    def __init__(self, owner: "MeasuringReceiver", index: int, mid: str, ssrc: int, rtx_ssrc: Optional[int]) -> None:
        self.owner = owner
        self.index = index
        self.mid = mid
        self.ssrc = ssrc
        self.rtx_ssrc = rtx_ssrc
        self.pending: dict[int, dict] = {}  # ts -> {"pkts": {seq: payload}, "start": seq, "end": seq, "key": bool}
        self.last_end_seq: Optional[int] = None
        self.last_ts: Optional[int] = None
        self.need_key = True
        self.last_pli = 0.0
        self._decoder: Any = None
        # figures (written by the decode thread, read by report())
        self.packets = 0
        self.rtx_packets = 0
        self.bytes = 0
        self.first_packet_t = 0.0
        self.last_packet_t = 0.0
        self.jitter = 0.0  # RFC 3550 interarrival jitter, 90 kHz units
        self._transit: Optional[float] = None
        self.frames_complete = 0
        self.frames_dropped = 0  # complete frames not decodable (after a gap, before a keyframe)
        self.gaps = 0
        self.plis = 0
        self.frames = 0
        self.decode_errors = 0
        self.stamp_errors = 0
        self.no_clock = 0
        self.first_t = 0.0
        self.last_t = 0.0
        self.resolutions: dict[str, int] = {}
        self.layer_changes = 0
        self._last_res: Optional[str] = None
        self.latency_ms = array("d")
        self.numbers = array("q")  # absolute frame numbers read (with a clock), in decode order
        self.sites: dict[str, int] = {}
        self.freezes = 0
        self.frozen_s = 0.0
        self.longest_freeze_s = 0.0
        self.skipped = 0
        self.repeated = 0  # the same frame again: the old layer's copy, then the new layer's keyframe
        self.out_of_order = 0
        self._last_site: Optional[str] = None
        self._last_n: Optional[int] = None
        self._last_pic_t = 0.0

    # ---------------------------------------------------------------- packets (event loop)

    def on_packet(self, p: bytes, rtx: bool) -> None:
        b0 = p[0]
        off = 12 + ((b0 & 0x0F) << 2)
        if b0 & 0x10:
            off += 4 + (((p[off + 2] << 8) | p[off + 3]) << 2)
        end = len(p) - (p[-1] if b0 & 0x20 else 0)
        if rtx:
            if end - off < 3:
                return  # padding-only probe
            seq = (p[off] << 8) | p[off + 1]
            off += 2
            self.rtx_packets += 1
        ts = (p[4] << 24) | (p[5] << 16) | (p[6] << 8) | p[7]
        if not rtx:
            seq = (p[2] << 8) | p[3]
            self.packets += 1
            self.bytes += len(p)
            now = time.monotonic()
            if not self.first_packet_t:
                self.first_packet_t = now
            self.last_packet_t = now
            transit = now * 90000.0 - ts
            if self._transit is not None:
                d = abs(transit - self._transit)
                if d < 900000:  # a jump of > 10 s is a source switch or a wrap, not jitter
                    self.jitter += (d - self.jitter) / 16.0
            self._transit = transit
        if off >= end:
            return
        marker = bool(p[1] & 0x80)
        last_ts = self.last_ts
        if last_ts is not None and not 0 < ((ts - last_ts) & 0xFFFFFFFF) < 0x80000000:
            return  # a copy (probe, RTX) of a frame already complete, or an older one
        f = self.pending.get(ts)
        if f is None:
            if len(self.pending) >= MAX_PENDING_FRAMES:
                self.pending.pop(next(iter(self.pending)))
            f = self.pending[ts] = {"pkts": {}, "start": None, "end": None, "key": False}
        pkts = f["pkts"]
        if seq in pkts:
            return
        payload = p[off:end]
        pkts[seq] = payload
        d0 = payload[0]
        if d0 & 0x10 and not d0 & 0x07:  # S=1, partition 0: the frame's first packet
            f["start"] = seq
            dl = _descriptor_len(payload)
            if 0 < dl < len(payload) and not payload[dl] & 0x01:
                f["key"] = True
        if marker:
            f["end"] = seq
        start, last = f["start"], f["end"]
        if start is not None and last is not None and len(pkts) == ((last - start) & 0xFFFF) + 1:
            self._complete(ts, f)

    def _complete(self, ts: int, f: dict) -> None:
        now = time.monotonic()
        # anything pending from before this frame will never be decoded now
        for old in [t for t in self.pending if ((ts - t) & 0xFFFFFFFF) < 0x80000000]:
            del self.pending[old]
        self.frames_complete += 1
        start = f["start"]
        gap = self.last_end_seq is not None and start != ((self.last_end_seq + 1) & 0xFFFF)
        self.last_end_seq = f["end"]
        self.last_ts = ts
        if gap and not f["key"]:
            self.gaps += 1
            self.need_key = True
        if self.need_key and not f["key"]:
            self.frames_dropped += 1
            self._ask_keyframe(now)
            return
        self.need_key = False
        pkts = f["pkts"]
        data = b"".join(pl[_descriptor_len(pl) :] for _, pl in sorted(pkts.items(), key=lambda kv: (kv[0] - start) & 0xFFFF))
        self.owner._submit(self, data, now, self.owner.site_of(self.index))

    def _ask_keyframe(self, now: float) -> None:
        if now - self.last_pli < PLI_INTERVAL:
            return
        self.last_pli = now
        peer = self.owner.peer
        peer.transport.send_rtcp(rtcp.pack_pli(peer.rtcp_ssrc, self.ssrc))
        self.plis += 1

    # ---------------------------------------------------------------- decoding (worker thread)

    def decode(self, data: bytes, complete_t: float, site: Optional[str]) -> None:
        import av

        if self._decoder is None:
            self._decoder = av.CodecContext.create("vp8", "r")
        try:
            pictures = self._decoder.decode(av.Packet(data))
        except Exception:  # a corrupt frame: count it, keep going (the next keyframe heals)
            self.decode_errors += 1
            return
        for pic in pictures:
            t = time.monotonic()
            gray = luma(pic) if pic.format.name in ("yuv420p", "yuvj420p") else pic.to_ndarray(format="gray")
            self._picture(t, gray, pic.width, pic.height, site)

    def _picture(self, t: float, gray, width: int, height: int, site: Optional[str]) -> None:
        self.frames += 1
        if not self.first_t:
            self.first_t = t
        res = f"{width}x{height}"
        self.resolutions[res] = self.resolutions.get(res, 0) + 1
        if self._last_res is not None and res != self._last_res:
            self.layer_changes += 1
        self._last_res = res
        same_site = site is not None and site == self._last_site
        if same_site and self._last_pic_t and t - self._last_pic_t > FREEZE_S:
            gap = t - self._last_pic_t
            self.freezes += 1
            self.frozen_s += gap
            self.longest_freeze_s = max(self.longest_freeze_s, gap)
        self._last_pic_t = t
        self.last_t = t
        if site is not None:
            self.sites[site] = self.sites.get(site, 0) + 1
        if not same_site:
            self._last_n = None
        self._last_site = site
        stamp = read_stamp(gray)
        if stamp is None:
            self.stamp_errors += 1
            return
        clock = self.owner.clock_for(site)
        if clock is None:
            self.no_clock += 1
            return
        n = clock.frame_for(stamp.frame, t)
        self.latency_ms.append((t - clock.send_time(n)) * 1000.0)
        self.numbers.append(n)
        last = self._last_n
        if last is not None:
            if n > last + 1:
                self.skipped += n - last - 1
            elif n == last:
                self.repeated += 1
            elif n < last:
                self.out_of_order += 1
        if last is None or n > last:
            self._last_n = n

    # ---------------------------------------------------------------- figures

    def report(self) -> dict:
        lat = list(self.latency_ms)
        span = self.last_t - self.first_t
        return {
            "index": self.index,
            "mid": self.mid,
            "site_id": self.owner.site_of(self.index),
            "sites": dict(self.sites),
            "packets": self.packets,
            "rtx_packets": self.rtx_packets,
            "kbps": round(self.bytes * 8 / 1000 / (self.last_packet_t - self.first_packet_t), 1)
            if self.last_packet_t > self.first_packet_t
            else 0.0,
            "jitter_ms": round(self.jitter / 90.0, 2),
            "frames_complete": self.frames_complete,
            "frames": self.frames,
            "fps": round((self.frames - 1) / span, 2) if span > 0 else 0.0,
            "resolutions": dict(self.resolutions),
            "layer_changes": self.layer_changes,
            "latency_ms": {
                "n": len(lat),
                "p50": round(_percentile(lat, 0.5), 1),
                "p95": round(_percentile(lat, 0.95), 1),
                "max": round(max(lat), 1) if lat else float("nan"),
                "min": round(min(lat), 1) if lat else float("nan"),
            },
            "freezes": self.freezes,
            "frozen_s": round(self.frozen_s, 3),
            "longest_freeze_s": round(self.longest_freeze_s, 3),
            "skipped": self.skipped,
            "repeated": self.repeated,
            "out_of_order": self.out_of_order,
            "stamp_errors": self.stamp_errors,
            "no_clock": self.no_clock,
            "gaps": self.gaps,
            "frames_dropped": self.frames_dropped,
            "decode_errors": self.decode_errors,
            "plis": self.plis,
        }


def _descriptor_len(pl: bytes) -> int:
    n = 1
    b0 = pl[0]
    if b0 & 0x80:
        b1 = pl[1]
        n = 2
        if b1 & 0x80:
            n += 2 if pl[2] & 0x80 else 1
        if b1 & 0x40:
            n += 1
        if b1 & 0x30:
            n += 1
    return n


ClockSource = Union[Mapping[str, FrameClock], Callable[[Optional[str]], Optional[FrameClock]]]


class MeasuringReceiver:
    """Decodes and measures `sample` video slots of `peer` (a RawPeer / HoinghiSite)."""

    def __init__(self, peer, sample: Union[int, list[int]] = 2, clocks: Optional[ClockSource] = None) -> None:
        self.peer = peer
        self.sample = list(range(sample)) if isinstance(sample, int) else list(sample)
        self.clocks: ClockSource = CLOCKS if clocks is None else clocks
        self.meters: dict[int, SlotMeter] = {}  # by slot index
        self._by_ssrc: dict[int, tuple[SlotMeter, bool]] = {}
        self._bound = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="measure")
        self._inflight = 0
        self._lock = threading.Lock()
        self.backlog_dropped = 0
        if peer.transport.connected.is_set():
            raise RuntimeError("create the MeasuringReceiver before the peer connects (its RTP callback is bound then)")
        inner = peer.transport.on_rtp
        by_ssrc = self._by_ssrc

        def on_rtp(data: bytes, plain: bool = True, arrival_ns: int = 0) -> None:
            inner(data, plain, arrival_ns)
            if not plain:
                return
            if not self._bound:
                self._bind()
            hit = by_ssrc.get((data[8] << 24) | (data[9] << 16) | (data[10] << 8) | data[11])
            if hit is not None:
                hit[0].on_packet(data, hit[1])

        peer.transport.on_rtp = on_rtp

    def _bind(self) -> None:
        sdp = getattr(self.peer, "answer_sdp", "")
        if not sdp:
            return
        self._bound = True
        for index, (mid, ssrc, rtx) in enumerate(parse_answer_slots(sdp)):
            if index in self.sample:
                m = SlotMeter(self, index, mid, ssrc, rtx)
                self.meters[index] = m
                self._by_ssrc[ssrc] = (m, False)
                if rtx is not None:
                    self._by_ssrc[rtx] = (m, True)

    def site_of(self, index: int) -> Optional[str]:
        slots = getattr(self.peer, "slots", None) or {}
        video = slots.get("video") or []
        for s in video:
            if s.get("index") == index:
                return s.get("site_id")
        return None

    def clock_for(self, site: Optional[str]) -> Optional[FrameClock]:
        if site is None:
            return None
        c = self.clocks
        if callable(c):
            return c(site)
        return c.get(site)

    def _submit(self, meter: SlotMeter, data: bytes, t: float, site: Optional[str]) -> None:
        with self._lock:
            if self._inflight > 100:  # the decoder cannot keep up: say so rather than queue forever
                self.backlog_dropped += 1
                meter.need_key = True
                return
            self._inflight += 1
        try:
            self._executor.submit(self._run, meter, data, t, site)
        except RuntimeError:  # closed while the last packets were still arriving
            with self._lock:
                self._inflight -= 1

    def _run(self, meter: SlotMeter, data: bytes, t: float, site: Optional[str]) -> None:
        try:
            meter.decode(data, t, site)
        except Exception:
            logger.exception("measuring decode failed")
        finally:
            with self._lock:
                self._inflight -= 1

    def flush(self, timeout: float = 5.0) -> None:
        """Wait (blocking, briefly) until queued frames are decoded."""
        deadline = time.monotonic() + timeout
        while self._inflight and time.monotonic() < deadline:
            time.sleep(0.01)

    def report(self) -> dict:
        """Per sampled slot and in total; `rtp` are the peer's packet-level counters."""
        slots = [m.report() for _, m in sorted(self.meters.items())]
        lat = [v for m in self.meters.values() for v in m.latency_ms]
        rx = self.peer.receiver
        expected = sum(s.ext - s.first_ext + 1 for s in rx.streams.values())
        received = sum(s.received for s in rx.streams.values())
        return {
            "slots": slots,
            "total": {
                "frames": sum(s["frames"] for s in slots),
                "latency_ms": {
                    "n": len(lat),
                    "p50": round(_percentile(lat, 0.5), 1),
                    "p95": round(_percentile(lat, 0.95), 1),
                    "max": round(max(lat), 1) if lat else float("nan"),
                },
                "freezes": sum(s["freezes"] for s in slots),
                "frozen_s": round(sum(s["frozen_s"] for s in slots), 3),
                "skipped": sum(s["skipped"] for s in slots),
                "stamp_errors": sum(s["stamp_errors"] for s in slots),
                "decode_backlog_dropped": self.backlog_dropped,
            },
            "rtp": {
                "packets": rx.packets,
                "rtx_packets": rx.rtx_packets,
                "bytes": rx.bytes,
                "expected": expected,
                "lost": max(0, expected - received),
                "bad_srtp": self.peer.transport.bad_in,
            },
        }

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
