"""Synthetic sites for rehearsals and locust: link profiles, a raw-path shaper, header-only stats.

Shared by `loadtest.rehearse` (many sites in one process) and `loadtest/locustfile.py`
(one locust user = one site). A site is a `rawpeer.HoinghiSite`: it joins through the real
signaling (docs/protocol.md), connects with real ICE/DTLS/SRTP, publishes media that costs
nothing to encode and receives every slot the server offers.

Three pieces live here:

* (`loadtest.linkprofile`: `LinkProfile` and its presets, the link a site sits behind.)
* `RawLinkShaper`: the profile applied in-process on the raw peer's own fast path (its
  nominated pair's `datagram_received` and its `sendto`), both ways. `loadtest.shaper`
  wraps aiortc's ICE path, which a raw peer bypasses once DTLS is up, so it would shape
  nothing here. Only SRTP/SRTCP is shaped; STUN and DTLS pass (as on a real link that still
  carries the odd handshake). Per direction: random loss, a `tc tbf`-like rate cap (FIFO
  queue, later packets dropped once `queue_ms` of data waits), a fixed delay; one timer per
  direction drains the queue, not one per packet.
* `SiteReceiver`: rawpeer's `Receiver` (sequence loss, RTX apart, transport-cc arrivals)
  plus, per received SSRC and from the RTP header alone (so it works on packets the light
  path leaves encrypted): bytes, RFC 3550 interarrival jitter, frames (a new RTP timestamp)
  and freezes the way WebRTC's stats count them (a frame gap > max(3 x mean, mean + 150 ms)).

Media is pluggable (`make_media`): `synthetic` is rawpeer's own VideoSource/AudioSource
(one layer, no codec); once loadtest/media_source.py exists, its pre-encoded stamped
simulcast VP8 + Opus is picked by name with the same interface.
"""

from __future__ import annotations

import asyncio
import inspect
import random
import time
from array import array
from collections import deque
from typing import Any, Callable, Optional

from media.rtcp import NTP_EPOCH_OFFSET

from .linkprofile import LinkProfile, SiteSpec
from .rawpeer import AUDIO_CLOCK, VIDEO_CLOCK, HoinghiSite, Receiver

UDP_IP_OVERHEAD = 28  # bytes of IPv4 + UDP header per datagram on the wire


# --------------------------------------------------------------------------- shaping


class _Direction:
    """Loss, rate cap (FIFO queue of at most queue_s of data) and fixed delay for one direction."""

    __slots__ = ("loop", "deliver", "bps", "delay", "loss", "queue_s", "rng", "free_at", "q", "timer",
                 "dropped_loss", "dropped_queue", "dropped_rtcp", "passed", "passed_bytes", "clock_ns", "delivering_ns")

    def __init__(self, loop: asyncio.AbstractEventLoop, deliver: Callable[[bytes], None], bps: Optional[float],
                 delay_s: float, loss: float, queue_s: float, rng: random.Random,
                 clock_ns: Optional[Callable[[], int]] = None) -> None:
        #: when a packet entered the link (monotonic ns): the kernel's receive stamp for the
        #: downlink, so a late generator does not push its own delay into the link's queue;
        #: `delivering_ns` is when the link hands the packet on (what the receiver stamps)
        self.clock_ns = clock_ns
        self.delivering_ns = 0
        self.loop = loop
        self.deliver = deliver
        self.bps = bps
        self.delay = delay_s
        self.loss = loss
        self.queue_s = queue_s
        self.rng = rng
        self.free_at = 0.0
        self.q: deque = deque()
        self.timer: Optional[asyncio.TimerHandle] = None
        self.dropped_loss = 0
        self.dropped_queue = 0
        self.dropped_rtcp = 0  # of the drops above, SRTCP packets (the rest is RTP)
        self.passed = 0
        self.passed_bytes = 0

    @property
    def dropped_rtp(self) -> int:
        return self.dropped_loss + self.dropped_queue - self.dropped_rtcp

    def queued_rtp(self) -> int:
        return sum(1 for _, d in self.q if not 192 <= d[1] <= 208)

    def push(self, data: bytes) -> None:
        if self.loss and self.rng.random() < self.loss:
            self.dropped_loss += 1
            if 192 <= data[1] <= 208:
                self.dropped_rtcp += 1
            return
        now = self.clock_ns() / 1e9 if self.clock_ns is not None else self.loop.time()
        size = len(data) + UDP_IP_OVERHEAD
        bps = self.bps
        if bps:
            start = self.free_at if self.free_at > now else now
            if start - now > self.queue_s:
                self.dropped_queue += 1
                if 192 <= data[1] <= 208:
                    self.dropped_rtcp += 1
                return
            self.free_at = start + size * 8 / bps
            due = self.free_at + self.delay
        else:
            due = now + self.delay
        self.passed += 1
        self.passed_bytes += size
        q = self.q
        if not q and due - time.monotonic() < 0.0005:
            self.delivering_ns = int(due * 1e9)
            self.deliver(data)
            return
        q.append((due, data))
        if self.timer is None:
            self.timer = self.loop.call_at(due, self._drain)

    def _drain(self) -> None:
        self.timer = None
        q = self.q
        limit = self.loop.time() + 0.0005
        deliver = self.deliver
        while q and q[0][0] <= limit:
            due, data = q.popleft()
            self.delivering_ns = int(due * 1e9)
            deliver(data)
        if q:
            self.timer = self.loop.call_at(q[0][0], self._drain)

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.q.clear()


class RawLinkShaper:
    """Applies a LinkProfile to a connected rawpeer.RawTransport, both directions."""

    def __init__(self, profile: LinkProfile, queue_ms: float = 200.0, seed: Optional[int] = None) -> None:
        self.profile = profile
        self.queue_s = queue_ms / 1000.0
        self.rng = random.Random(seed)
        self.down: Optional[_Direction] = None
        self.up: Optional[_Direction] = None

    def attach(self, transport: Any) -> bool:
        """Call once transport.connected is set (its fast path is installed). False if it is not."""
        pc = transport.pc
        transceivers = pc.getTransceivers()
        if not transceivers or transport._sendto is None:
            return False
        ice = transceivers[0].receiver.transport.transport._connection
        pair = ice._nominated.get(1)
        if pair is None:
            return False
        loop = asyncio.get_running_loop()
        p = self.profile
        protocol = pair.protocol
        inner_received = protocol.datagram_received  # rawpeer's SRTP hook
        addr = pair.remote_addr
        down = _Direction(loop, lambda data: inner_received(data, addr),
                          p.down_kbps * 1000 if p.down_kbps else None, p.delay_ms / 1000.0, p.loss_pct / 100.0,
                          self.queue_s, self.rng, clock_ns=getattr(transport, "kernel_arrival", None))
        # the receiver stamps a packet with the time the link delivers it, not with the time
        # the kernel got it (before the link's queue and delay)
        transport.arrival_ns = lambda: down.delivering_ns or time.monotonic_ns()

        def datagram_received(data: bytes, a: tuple) -> None:
            if 127 < data[0] < 192:
                down.push(data)
            else:
                inner_received(data, a)

        protocol.datagram_received = datagram_received
        real_sendto = transport._sendto
        up = _Direction(loop, lambda data: real_sendto(data, addr),
                        p.up_kbps * 1000 if p.up_kbps else None, p.delay_ms / 1000.0, p.loss_pct / 100.0,
                        self.queue_s, self.rng)
        transport._sendto = lambda data, a: up.push(data)
        self.down, self.up = down, up
        return True

    def stats(self) -> dict:
        out: dict[str, int] = {}
        for key, d in (("down", self.down), ("up", self.up)):
            if d is not None:
                out[f"{key}_dropped_loss"] = d.dropped_loss
                out[f"{key}_dropped_queue"] = d.dropped_queue
                out[f"{key}_dropped_rtcp"] = d.dropped_rtcp
                out[f"{key}_passed"] = d.passed
                out[f"{key}_passed_bytes"] = d.passed_bytes
        return out

    def close(self) -> None:
        for d in (self.down, self.up):
            if d is not None:
                d.close()


# --------------------------------------------------------------------------- receiving


class Track:
    """Header-only measurements of one received SSRC (one slot of a site)."""

    __slots__ = ("ssrc", "video", "clock", "bytes", "packets", "jitter", "last_transit", "last_ts", "last_frame",
                 "frames", "mean_interval", "freezes", "freeze_s", "first_frame", "freeze_at", "sr_unix", "sr_rtp")

    def __init__(self, ssrc: int, video: bool) -> None:
        self.ssrc = ssrc
        self.video = video
        self.clock = VIDEO_CLOCK if video else AUDIO_CLOCK
        self.bytes = 0
        self.packets = 0
        self.jitter = 0.0  # RFC 3550, in seconds
        self.last_transit: Optional[float] = None
        self.last_ts = -1
        self.last_frame = 0.0
        self.frames = 0
        self.mean_interval = 0.0
        self.freezes = 0
        self.freeze_s = 0.0
        self.first_frame = 0.0
        self.freeze_at: list[tuple[float, float]] = []  # (monotonic time the frame came, gap s), the first 100
        self.sr_unix = 0.0  # the slot's last sender report: wall time <-> RTP time (0: none yet)
        self.sr_rtp = 0


class SiteReceiver(Receiver):
    """rawpeer.Receiver plus per-SSRC bytes, jitter, frames and freezes from the RTP header."""

    def __init__(self) -> None:
        super().__init__()
        self.tracks: dict[int, Track] = {}
        self.first_media: Optional[float] = None  # time.monotonic() of the first media packet
        #: one-way latency samples, ms: a frame's first packet's arrival minus its capture time,
        #: from the RTP timestamp and the slot's sender report (the SFU translates the
        #: publisher's SRs into each slot's timeline, as a browser's A/V sync relies on). The
        #: publisher and this receiver share the host's clock, so this is publisher -> SFU ->
        #: receiver, an upper bound on what the SFU adds.
        self.latency_ms = array("f")
        #: wall clock minus monotonic clock (SRs carry wall-clock time, arrivals are monotonic)
        self.unix_offset = time.time() - time.monotonic()

    def on_sr(self, ssrc: int, ntp: int, rtp_ts: int) -> None:
        tr = self.tracks.get(ssrc)
        if tr is not None:
            tr.sr_unix = (ntp >> 32) - NTP_EPOCH_OFFSET + (ntp & 0xFFFFFFFF) / 4294967296.0
            tr.sr_rtp = rtp_ts

    def on_rtp(self, p: bytes, plain: bool = True, arrival_ns: int = 0) -> None:
        if not arrival_ns:
            arrival_ns = time.monotonic_ns()
        Receiver.on_rtp(self, p, plain, arrival_ns)
        pt = p[1] & 0x7F
        if pt in self.rtx_pts:
            return
        now = arrival_ns / 1e9
        ssrc = (p[8] << 24) | (p[9] << 16) | (p[10] << 8) | p[11]
        tr = self.tracks.get(ssrc)
        if tr is None:
            tr = self.tracks[ssrc] = Track(ssrc, pt in self.video_pts)
            if self.first_media is None:
                self.first_media = now
        tr.bytes += len(p)
        tr.packets += 1
        ts = (p[4] << 24) | (p[5] << 16) | (p[6] << 8) | p[7]
        transit = now - ts / tr.clock
        last = tr.last_transit
        if last is not None:
            d = transit - last
            if d < 0:
                d = -d
            if d < 10.0:  # a source switch re-bases the timestamps: not jitter
                tr.jitter += (d - tr.jitter) / 16.0
        tr.last_transit = transit
        if tr.video and ts != tr.last_ts:
            tr.last_ts = ts
            if tr.sr_unix and len(self.latency_ms) < 200_000:
                delta = ((ts - tr.sr_rtp + 0x80000000) & 0xFFFFFFFF) - 0x80000000
                self.latency_ms.append((now + self.unix_offset - tr.sr_unix - delta / tr.clock) * 1000.0)
            if tr.frames:
                gap = now - tr.last_frame
                mean = tr.mean_interval
                if tr.frames > 5 and gap > max(3 * mean, mean + 0.15):
                    tr.freezes += 1
                    tr.freeze_s += gap
                    if tr.freezes <= 100:
                        tr.freeze_at.append((now, gap))
                tr.mean_interval = gap if tr.frames == 1 else mean + (min(gap, 1.0) - mean) / 30.0
            else:
                tr.first_frame = now
            tr.last_frame = now
            tr.frames += 1


# --------------------------------------------------------------------------- media


class SitePacer:
    """One timer for every synthetic publisher, each at its own packets/s (its uplink decides).

    Like rawpeer.Pacer (fractional packets carried over, resync instead of a burst when the
    loop falls behind), but per source: a site behind a 400 kbit/s uplink publishes what
    fits it, as a browser's encoder would once its bandwidth estimate settles, instead of
    flooding its own link (which would also starve its RTCP feedback).
    """

    def __init__(self, fps: float = 20.0) -> None:
        self.fps = fps
        self.video: list[list] = []  # [source, packets/s, carry]
        self.audio: list = []
        self.resyncs = 0
        self._tasks: list[asyncio.Task] = []

    def add(self, video: Any, rate: float) -> None:
        self.video.append([video, rate, 0.0])

    def remove(self, video: Any) -> None:
        self.video = [v for v in self.video if v[0] is not video]

    def start(self) -> None:
        if not self._tasks:
            self._tasks = [asyncio.ensure_future(self._video_loop()), asyncio.ensure_future(self._audio_loop())]

    async def _video_loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_t = loop.time()
        step = 1.0 / self.fps
        while True:
            now = loop.time()
            for entry in self.video:
                entry[2] += entry[1] * step
                count = int(entry[2])
                entry[2] -= count
                entry[0].send_frame(count, now)
            next_t += step
            delay = next_t - loop.time()
            if delay < -0.5:
                self.resyncs += 1
                next_t = loop.time()
                delay = 0.0
            await asyncio.sleep(max(0.0, delay))

    async def _audio_loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_t = loop.time()
        while True:
            for a in self.audio:
                a.send_packet()
            next_t += 0.02
            delay = next_t - loop.time()
            if delay < -0.5:
                next_t = loop.time()
                delay = 0.0
            await asyncio.sleep(max(0.0, delay))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._tasks = []


#: bytes a synthetic video packet adds to its payload on the wire: RTP header + abs-send-time
#: extension (20), SRTP tag (10), IPv4 + UDP (28)
VIDEO_PACKET_OVERHEAD = 58
AUDIO_BPS = 50 * (100 + 16 + 10 + UDP_IP_OVERHEAD) * 8  # rawpeer.AudioSource: 50 packets/s


class SyntheticMedia:
    """rawpeer's VideoSource/AudioSource (one layer, stamped, no codec), one SitePacer for all.

    Each site publishes `rate` video packets/s of `payload` bytes (~500 kbit/s by default),
    less where its uplink is slower: at most `uplink_share` of the uplink after audio.
    """

    name = "synthetic"
    simulcast = False

    def __init__(self, rate: float = 60.0, fps: float = 20.0, payload: int = 900, audio: bool = True,
                 uplink_share: float = 0.75) -> None:
        self.pacer = SitePacer(fps=fps)
        self.rate = rate
        self.payload = payload
        self.audio = audio
        self.uplink_share = uplink_share
        self.rates: dict[str, float] = {}

    def peer_kwargs(self, spec: Optional[SiteSpec] = None) -> dict:
        return {"payload_size": self.payload, "publish_audio": self.audio}

    def rate_for(self, profile: Optional[LinkProfile]) -> float:
        if profile is None or not profile.up_kbps:
            return self.rate
        budget = profile.up_kbps * 1000 * self.uplink_share - (AUDIO_BPS if self.audio else 0)
        fit = budget / (8 * (self.payload + VIDEO_PACKET_OVERHEAD))
        return max(5.0, min(self.rate, fit))

    def add(self, site: HoinghiSite, profile: Optional[LinkProfile] = None) -> None:
        if site.video is not None:
            rate = self.rate_for(profile)
            self.rates[site.name] = rate
            self.pacer.add(site.video, rate)
        if site.audio is not None:
            self.pacer.audio.append(site.audio)

    def remove(self, site: HoinghiSite) -> None:
        if site.video is not None:
            self.pacer.remove(site.video)
        if site.audio in self.pacer.audio:
            self.pacer.audio.remove(site.audio)

    def start(self) -> None:
        self.pacer.start()

    async def stop(self) -> None:
        await self.pacer.stop()

    def describe(self) -> dict:
        bps = self.rate * 8 * (self.payload + VIDEO_PACKET_OVERHEAD)
        return {"media": self.name, "simulcast": False, "video_pkt_s": self.rate, "video_kbps": round(bps / 1000),
                "fps": self.pacer.fps, "payload": self.payload, "audio": self.audio, "uplink_share": self.uplink_share}


class PreEncodedMedia:
    """loadtest.media_source's pre-encoded VP8 simulcast (q/h/f) + Opus, sent like a browser.

    Encoded once per machine (cached on disk), shared by every site; each site's sources run
    on media_sender's shared MediaPacer. The hub talks all the time (real audio levels, so
    the server's speaker detection has someone to find), the other sites send silence unless
    `talkers` says otherwise. A site whose uplink cannot carry a layer (with the audio, at
    `uplink_share` of the link) never sends it, as a browser's bandwidth estimate would
    stop it; `publish_layers` from the server still pauses layers nobody takes.
    """

    name = "preencoded"
    simulcast = True

    def __init__(self, audio: bool = True, uplink_share: float = 0.75, cache_dir: Optional[str] = None,
                 fps: int = 20, talker_ids: Optional[list[str]] = None) -> None:
        from .media_source import SyntheticMedia as Cache  # built by another work item; optional

        self.cache = Cache.load(cache_dir, fps=fps)
        self.fps = fps
        self.audio = audio
        self.uplink_share = uplink_share
        #: which sites talk besides the hub, chosen once for the whole rehearsal
        #: (`choose_talkers`; counting per generator process made `--talkers 3` six talkers)
        self.talker_ids = set(talker_ids or ())
        self.layer_bps = [layer.bitrate(fps) for layer in self.cache.layers]
        self.rids = [layer.rid for layer in self.cache.layers]
        self.allowed: dict[str, list[str]] = {}
        self.pacer: Any = None

    def peer_kwargs(self, spec: Optional[SiteSpec] = None) -> dict:
        from .media_source import TalkSchedule

        talks = spec is not None and (spec.role == "hub" or spec.site_id in self.talker_ids)
        talk = TalkSchedule.always() if talks else TalkSchedule.silent()
        return {"media": self.cache, "simulcast": True, "publish_audio": self.audio, "talk": talk,
                "site_id": spec.site_id if spec else None}

    def layers_for(self, profile: Optional[LinkProfile]) -> list[str]:
        if profile is None or not profile.up_kbps:
            return list(self.rids)
        budget = profile.up_kbps * 1000 * self.uplink_share - (AUDIO_BPS if self.audio else 0)
        out, total = [], 0.0
        for rid, bps in zip(self.rids, self.layer_bps):
            total += bps
            if total <= budget or not out:
                out.append(rid)
        return out

    async def add(self, site: HoinghiSite, profile: Optional[LinkProfile] = None) -> None:
        from .media_sender import MediaPacer

        src = site.simulcast_source
        if src is not None:
            allowed = self.layers_for(profile)
            self.allowed[site.name] = allowed
            if len(allowed) < len(self.rids):
                inner = src.set_active

                def set_active(rids: list, now: Optional[float] = None, _inner=inner, _ok=set(allowed)) -> None:
                    _inner([r for r in rids if r in _ok], now)

                src.set_active = set_active
                set_active(list(self.rids))
        if self.pacer is None:
            self.pacer = MediaPacer.shared()
        await site.start_media(self.pacer)

    def remove(self, site: HoinghiSite) -> None:
        if self.pacer is not None:
            self.pacer.remove(site.simulcast_source, site.audio_source)

    def start(self) -> None:
        pass

    async def stop(self) -> None:
        if self.pacer is not None:
            await self.pacer.stop()

    def describe(self) -> dict:
        return {"media": self.name, "simulcast": True, "rids": self.rids,
                "layer_kbps": [round(b / 1000) for b in self.layer_bps], "fps": self.fps, "audio": self.audio,
                "uplink_share": self.uplink_share, "talkers": sorted(self.talker_ids)}


def choose_talkers(specs: list[SiteSpec], n: int) -> list[str]:
    """The sites that talk all the time besides the hub: the first n after it, whichever
    generator process runs them (and the same ones in a side-by-side Janus run)."""
    return [s.site_id for s in specs if s.role != "hub"][:n]


def make_media(name: str = "auto", **kw: Any) -> Any:
    """The media every synthetic site publishes. `auto`: pre-encoded simulcast when available."""
    if name in ("auto", "preencoded"):
        try:
            from . import media_sender, media_source  # noqa: F401  (built by another work item)
            from .rawpeer import RawPeer

            ok = "simulcast" in RawPeer.__init__.__code__.co_varnames
        except ImportError:
            ok = False
        if ok:
            return PreEncodedMedia(**{k: v for k, v in kw.items() if k in ("audio", "uplink_share", "cache_dir", "talker_ids")})
        if name == "preencoded":
            raise RuntimeError("pre-encoded media is not available here (loadtest.media_source): use --media synthetic")
    return SyntheticMedia(**{k: v for k, v in kw.items() if k in ("rate", "fps", "payload", "audio", "uplink_share")})


class StallWatch:
    """Notices when this process's event loop was late: a stall here looks like a freeze there.

    Every freeze the sites report is then checked against it: freezes that coincide with a
    stall of the load generator are its own, not the server's.
    """

    def __init__(self, interval: float = 0.01, threshold: float = 0.1) -> None:
        self.interval = interval
        self.threshold = threshold
        self.stalls: list[tuple[float, float]] = []  # (monotonic end, seconds late)
        self._task: Optional[asyncio.Task] = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            t = time.monotonic()
            await asyncio.sleep(self.interval)
            late = time.monotonic() - t - self.interval
            if late > self.threshold and len(self.stalls) < 10000:
                self.stalls.append((time.monotonic(), late))

    def covers(self, at: float, gap: float) -> bool:
        """Did a stall of this loop overlap the frame gap that ended at `at`?"""
        start = at - gap
        return any(end - late - 0.05 <= at and end + 0.05 >= start for end, late in self.stalls)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None


# --------------------------------------------------------------------------- one site


class SimSite:
    """One synthetic site: a HoinghiSite with a link, its receiver stats and join timings."""

    def __init__(self, spec: SiteSpec, http: Any, base_url: str, token: str, media: Any, *,
                 decrypt_every: int = 1, feedback: str = "twcc", seed: Optional[int] = None,
                 queue_ms: float = 200.0) -> None:
        self.spec = spec
        self.media = media
        kw = dict(media.peer_kwargs(spec))
        kw.setdefault("publish_video", True)
        self.peer = HoinghiSite(http, base_url, token, spec.name, video_slots=64, audio_slots=16,
                                feedback=feedback, decrypt_every=decrypt_every, **kw)
        self.receiver = SiteReceiver()
        self.receiver.read_stamps = getattr(self.peer.receiver, "read_stamps", True)
        self.peer.receiver = self.receiver
        self.peer.transport.on_rtp = self.receiver.on_rtp
        self.shaper = RawLinkShaper(spec.profile, queue_ms=queue_ms, seed=seed) if spec.profile.shaped else None
        self.t_start = 0.0
        self.t_joined: Optional[float] = None
        self.t_connected: Optional[float] = None
        self.error: Optional[str] = None
        self.closed = False

    @property
    def join_s(self) -> Optional[float]:
        return None if self.t_joined is None else self.t_joined - self.t_start

    @property
    def connect_s(self) -> Optional[float]:
        return None if self.t_connected is None else self.t_connected - self.t_start

    @property
    def first_media_s(self) -> Optional[float]:
        fm = self.receiver.first_media
        return None if fm is None else fm - self.t_start

    async def connect(self, timeout: float = 30.0) -> None:
        """Join, offer, wait for DTLS; attach the link shaper; hand publishers to the media."""
        self.t_start = time.monotonic()
        try:
            await self.peer.join(timeout=timeout)
            self.t_joined = time.monotonic()
            await self.peer.negotiate(timeout=timeout)
            await self.peer.wait_connected(timeout=timeout)
            self.t_connected = time.monotonic()
            if self.shaper is not None:
                self.shaper.attach(self.peer.transport)
            added = self.media.add(self.peer, self.spec.profile)
            if inspect.isawaitable(added):
                await added
        except Exception as exc:  # reported per site; one failed join must not end a rehearsal
            self.error = f"{type(exc).__name__}: {exc}"[:300]
            raise

    def stage_ssrc(self) -> Optional[int]:
        """SSRC the server sends slot 0 (the stage) on, from the slots message and the answer."""
        slots = self.peer.slots.get("video") or []
        if not slots:
            return None
        mid = slots[0].get("mid")
        desc = self.peer.pc.remoteDescription
        if mid is None or desc is None:
            return None
        return ssrc_by_mid(desc.sdp).get(str(mid))

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.media.remove(self.peer)
        if self.shaper is not None:
            self.shaper.close()
        try:
            await asyncio.wait_for(self.peer.close(), 5)
        except Exception:
            pass


def ssrc_by_mid(sdp: str) -> dict[str, int]:
    """First a=ssrc of each m-section, by its mid."""
    out: dict[str, int] = {}
    mid: Optional[str] = None
    for line in sdp.splitlines():
        if line.startswith("m="):
            mid = None
        elif line.startswith("a=mid:"):
            mid = line[6:].strip()
        elif line.startswith("a=ssrc:") and mid is not None and mid not in out:
            out[mid] = int(line[7:].split()[0])
    return out
