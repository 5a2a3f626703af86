"""A synthetic site: joins through the real signaling, connects with real ICE/DTLS/SRTP.

Used by the tests, the benchmarks and the load tools. It speaks the protocol in
docs/protocol.md exactly as the browser client does (same transceiver order, non-trickle
ICE) so what passes here is what a browser gets. Decoding of what it receives is optional:
the media-path tests decode (frames must really be decodable), the load tools count packets
from RTP headers only.
"""

from __future__ import annotations

import asyncio
import fractions
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import aiohttp
import numpy as np
from aiortc import (
    RTCBundlePolicy,
    RTCConfiguration,
    RTCIceServer,
    RTCIceTransportPolicy,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, VideoStreamTrack
from av import AudioFrame, VideoFrame

from media import network, vp8

from .shaper import LinkImpairment
from .twcc_feedback import TransportCcResponder, offer_transport_cc

logger = logging.getLogger(__name__)


def _vp8_keyframe_start(payload: bytes) -> bool:
    """The first packet of a VP8 keyframe (RFC 7741: S=1, partition 0, P=0 in the frame header)."""
    if not payload or not payload[0] & 0x10 or payload[0] & 0x07:
        return False
    n = vp8.descriptor_length(payload, 0, len(payload))
    return 0 < n < len(payload) and not payload[n] & 0x01


def _buffered(jb) -> list:
    """aiortc's jitter buffer from its origin: the packet at each sequence number, or None."""
    cap = jb.capacity
    return [jb._packets[(jb._origin + k) % cap] for k in range(cap)]


class PatternVideoTrack(VideoStreamTrack):
    """A moving test pattern at a fixed frame rate (aiortc encodes it: client side only)."""

    def __init__(self, width: int = 320, height: int = 240, fps: int = 15) -> None:
        super().__init__()
        self.width, self.height, self.fps = width, height, fps
        self.frames = 0
        self._start: Optional[float] = None
        base = np.zeros((height, width, 3), np.uint8)
        base[:, :, 1] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
        self._base = base

    async def recv(self) -> VideoFrame:
        if self._start is None:
            self._start = time.monotonic()
        target = self._start + self.frames / self.fps
        delay = target - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        img = self._base.copy()
        x = (self.frames * 4) % self.width
        img[:, x : x + 8, :] = 255
        frame = VideoFrame.from_ndarray(img, format="bgr24")
        frame.pts = int(self.frames * 90000 / self.fps)
        frame.time_base = fractions.Fraction(1, 90000)
        self.frames += 1
        return frame


class ToneAudioTrack(AudioStreamTrack):
    """A quiet 440 Hz tone, 20 ms frames at 48 kHz."""

    def __init__(self) -> None:
        super().__init__()
        self._n = 0
        self._start: Optional[float] = None

    async def recv(self) -> AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        target = self._start + self._n * 0.02
        delay = target - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        t = (np.arange(960) + self._n * 960) / 48000.0
        samples = (np.sin(2 * np.pi * 440 * t) * 3000).astype(np.int16).reshape(1, -1)
        frame = AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = 48000
        frame.pts = self._n * 960
        frame.time_base = fractions.Fraction(1, 48000)
        self._n += 1
        return frame


@dataclass
class ReceivedTrack:
    kind: str
    mid: str
    frames: int = 0
    first: float = 0.0
    last: float = 0.0
    sizes: set = field(default_factory=set)
    size: tuple = (0, 0)
    log: Optional[list] = None  # (arrival, (width, height)) of every decoded frame, when set

    def rate(self) -> float:
        if self.frames < 2 or self.last <= self.first:
            return 0.0
        return (self.frames - 1) / (self.last - self.first)


class SeqTracker:
    """Which media sequence numbers of one receive slot reached the jitter buffer, original
    or recovered by RTX: the loss a viewer's decoder actually suffers."""

    def __init__(self) -> None:
        self.received: set[int] = set()
        self.highest: Optional[int] = None

    def add(self, seq16: int) -> None:
        if self.highest is None:
            u = seq16
        else:
            d = (seq16 - (self.highest & 0xFFFF)) & 0xFFFF
            u = self.highest + d if d < 0x8000 else self.highest - (0x10000 - d)
        self.received.add(u)
        if self.highest is None or u > self.highest:
            self.highest = u

    def count(self, grace: int = 40) -> tuple[int, int]:
        """(expected, received) up to `grace` packets before the newest (still recoverable)."""
        if self.highest is None:
            return 0, 0
        top = self.highest - grace
        got = [u for u in self.received if u <= top]
        if not got:
            return 0, 0
        return top - min(got) + 1, len(got)


@dataclass
class InboundStats:
    ssrc: int
    packetsReceived: int
    packetsLost: int
    jitter: int


class SyntheticSite:
    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        publish_video: bool = True,
        publish_audio: bool = True,
        video_size: tuple[int, int] = (320, 240),
        fps: int = 15,
        decode: bool = True,
        impairment: Optional[LinkImpairment] = None,
        bind: tuple[str, ...] = ("127.0.0.1",),
        transport_cc: bool = True,
        use_ice_servers: bool = False,
        relay_only: bool = False,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.publish_video = publish_video
        self.publish_audio = publish_audio
        self.video_size = video_size
        self.fps = fps
        self.decode = decode
        self.impairment = impairment
        self.bind = bind
        self.transport_cc = transport_cc
        self.use_ice_servers = use_ice_servers  # take STUN/TURN servers from the join reply
        self.relay_only = relay_only  # iceTransportPolicy "relay": reach the server only via TURN
        self.twcc: Optional[TransportCcResponder] = None
        self.http: Optional[aiohttp.ClientSession] = None
        self.ws: Optional[aiohttp.ClientWebSocketResponse] = None
        self.pc: Optional[RTCPeerConnection] = None
        self.joined: dict = {}
        self.slots: dict = {"video": [], "audio": []}
        self.participants: dict[str, dict] = {}
        self.received: dict[str, ReceivedTrack] = {}
        self.seqs: dict[str, SeqTracker] = {}
        self.messages: list[dict] = []
        self.errors: list[dict] = []
        self.video_track: Optional[PatternVideoTrack] = None
        self._reader: Optional[asyncio.Task] = None
        self._consumers: list[asyncio.Task] = []
        self._waiters: list[tuple[str, asyncio.Future]] = []

    # ---------------------------------------------------------------- signaling

    async def connect(self) -> None:
        self.http = aiohttp.ClientSession()
        ws_url = self.base_url.replace("http://", "ws://").replace("https://", "wss://") + "/ws"
        self.ws = await self.http.ws_connect(ws_url, max_msg_size=1 << 20)
        self._reader = asyncio.create_task(self._read())

    async def send(self, message: dict) -> None:
        assert self.ws is not None
        await self.ws.send_str(json.dumps(message))

    def wait_for(self, type_: str, timeout: float = 10.0) -> "asyncio.Future[dict]":
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._waiters.append((type_, fut))
        return asyncio.ensure_future(asyncio.wait_for(fut, timeout))

    async def _read(self) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            self.messages.append(data)
            t = data.get("type")
            if t == "slots":
                self.slots = {"video": data["video"], "audio": data["audio"]}
            elif t == "error":
                self.errors.append(data)
            elif t == "participant_joined" or t == "participant_updated":
                self.participants[data["participant"]["id"]] = data["participant"]
            elif t == "participant_left":
                self.participants.pop(data["participant_id"], None)
            for waiter in list(self._waiters):
                if waiter[0] == t or (waiter[0] != "error" and t == "error" and data.get("fatal")):
                    self._waiters.remove(waiter)
                    if not waiter[1].done():
                        waiter[1].set_result(data)
        for _, fut in self._waiters:
            if not fut.done():
                fut.set_exception(ConnectionError("signaling closed"))

    async def join(self, name: Optional[str] = None) -> dict:
        await self.connect()
        fut = self.wait_for("joined")
        msg: dict[str, Any] = {"type": "join", "token": self.token}
        if name:
            msg["name"] = name
        await self.send(msg)
        self.joined = await fut
        if self.joined.get("type") == "error":
            raise ConnectionRefusedError(self.joined["code"])
        for p in self.joined["participants"]:
            self.participants[p["id"]] = p
        return self.joined

    # ---------------------------------------------------------------- media

    async def start_media(self, video_slots: Optional[int] = None, audio_slots: Optional[int] = None) -> None:
        slots = self.joined["slots"]
        nv = slots["video"] if video_slots is None else video_slots
        na = slots["audio"] if audio_slots is None else audio_slots
        ice_servers = [
            RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
            for s in (self.joined.get("ice_servers") or [] if self.use_ice_servers else [])
        ]
        policy = RTCIceTransportPolicy.RELAY if self.relay_only else RTCIceTransportPolicy.ALL
        pc = RTCPeerConnection(
            RTCConfiguration(iceServers=ice_servers, iceTransportPolicy=policy, bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        )
        self.pc = pc
        if self.publish_audio:
            pc.addTransceiver(ToneAudioTrack(), direction="sendonly")
        if self.publish_video:
            self.video_track = PatternVideoTrack(*self.video_size, fps=self.fps)
            pc.addTransceiver(self.video_track, direction="sendonly")
        for _ in range(nv):
            pc.addTransceiver("video", direction="recvonly")
        for _ in range(na):
            pc.addTransceiver("audio", direction="recvonly")

        @pc.on("track")
        def on_track(track) -> None:
            transceiver = next((t for t in pc.getTransceivers() if t.receiver.track is track), None)
            mid = transceiver.mid if transceiver else "?"
            rec = ReceivedTrack(track.kind, mid)
            self.received[mid] = rec
            if self.decode:
                self._consumers.append(asyncio.ensure_future(self._consume(track, rec)))

        with network.bind_addresses(list(self.bind)):
            await pc.setLocalDescription(await pc.createOffer())
        offer = pc.localDescription.sdp
        if self.transport_cc:
            # behave like a browser receiver: transport-cc feedback instead of REMB
            offer = offer_transport_cc(offer)
            self.twcc = TransportCcResponder(pc)
            self.twcc.attach()
        if self.impairment is not None:
            self.impairment.attach(pc)  # outermost: feedback sees what survived the link
        fut = self.wait_for("answer", timeout=20.0)
        await self.send({"type": "offer", "sdp": offer})
        answer = await fut
        if answer.get("type") == "error":
            raise RuntimeError(f"offer refused: {answer}")
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        self._consumers.append(asyncio.ensure_future(self._route_rtx()))
        self._consumers.append(asyncio.ensure_future(self._nack_retry()))
        if self.decode:
            self._consumers.append(asyncio.ensure_future(self._freeze_watchdog()))
        for t in pc.getTransceivers():
            if t.currentDirection == "recvonly":
                self._track_seqs(t)

    def _track_seqs(self, transceiver) -> None:
        r = transceiver.receiver
        tracker = self.seqs[transceiver.mid] = SeqTracker()
        original = r._handle_rtp_packet

        async def handle(packet, arrival_time_ms):
            rtx = r._RTCRtpReceiver__rtx_ssrc
            if packet.ssrc in rtx:
                if len(packet.payload) >= 2:
                    tracker.add((packet.payload[0] << 8) | packet.payload[1])
            else:
                tracker.add(packet.sequence_number)
            await original(packet, arrival_time_ms)

        r._handle_rtp_packet = handle

    def media_loss(self, mid: str) -> tuple[int, int]:
        """(expected, received) media packets of a slot, after retransmissions."""
        tracker = self.seqs.get(mid)
        return tracker.count() if tracker else (0, 0)

    async def _nack_retry(self) -> None:
        """Repeat NACKs for packets still missing, as browsers do every RTT.

        aiortc NACKs a gap once, when it first sees it; if that retransmission is lost too,
        its jitter buffer waits for 128 packets before giving up, a multi-second freeze no
        browser would show. Asking again every 100 ms keeps this synthetic site honest.
        """
        assert self.pc is not None
        asked: dict[tuple, list] = {}  # (mid, seq) -> [first asked, times]
        try:
            while True:
                await asyncio.sleep(0.1)
                now = time.monotonic()
                for t in self.pc.getTransceivers():
                    r = t.receiver
                    gen = getattr(r, "_RTCRtpReceiver__nack_generator", None)
                    if gen is None or not gen.missing or t.kind != "video":
                        continue
                    again = []
                    for seq in gen.missing:
                        entry = asked.setdefault((t.mid, seq), [now, 0])
                        # like libwebrtc: give up on a packet after ~1 s or 10 requests
                        if now - entry[0] < 1.0 and entry[1] < 10:
                            entry[1] += 1
                            again.append(seq)
                    if again:
                        for ssrc in set(r._RTCRtpReceiver__rtx_ssrc.values()):
                            await r._send_rtcp_nack(ssrc, sorted(again))
                if len(asked) > 4096:
                    asked = {k: v for k, v in asked.items() if now - v[0] < 2.0}
        except (asyncio.CancelledError, ConnectionError):
            pass

    async def _freeze_watchdog(self) -> None:
        """Ask for a keyframe when a video slot receives packets but decodes no frame.

        libwebrtc does this (a frozen decoder requests a keyframe within a second); aiortc
        only asks when its jitter buffer overflows in a particular way, so after a long gap
        (a link that was down for seconds) it can sit on undecodable packets until the
        publisher's next periodic keyframe. A browser would not; neither does this site. It
        also gives up on packets that never came (libwebrtc's frame buffer skips them once
        NACKs time out; aiortc's jitter buffer waits for them until it overflows, many
        seconds at a low packet rate).
        """
        assert self.pc is not None
        state: dict[str, list] = {}  # mid -> [frames, highest seq, stalled since, last PLI]
        try:
            while True:
                await asyncio.sleep(0.25)
                now = time.monotonic()
                for t in self.pc.getTransceivers():
                    rec, tracker = self.received.get(t.mid), self.seqs.get(t.mid)
                    if t.kind != "video" or rec is None or tracker is None or tracker.highest is None:
                        continue
                    st = state.setdefault(t.mid, [rec.frames, tracker.highest, now, 0.0])
                    # a complete keyframe past a hole is decoded at once (libwebrtc's frame
                    # buffer drops the older frames it cannot complete): the switch to a lower
                    # layer behind a loss burst showed 3-7 s late without this
                    self._jump_to_keyframe(t.receiver)
                    if rec.frames != st[0] or tracker.highest == st[1]:
                        st[0], st[1], st[2] = rec.frames, tracker.highest, now  # decoding, or idle
                        continue
                    st[1] = tracker.highest
                    if now - st[2] > 1.0:
                        self._skip_missing(t.receiver)
                    if now - st[2] > 0.5 and now - st[3] > 1.0:
                        r = t.receiver
                        rtx = r._RTCRtpReceiver__rtx_ssrc
                        for ssrc in [s for s in r._RTCRtpReceiver__remote_streams if s not in rtx][:1]:
                            st[3] = now
                            await r._send_rtcp_pli(ssrc)
        except (asyncio.CancelledError, ConnectionError):
            pass

    @staticmethod
    def _jump_to_keyframe(receiver) -> None:
        """Move aiortc's jitter buffer to the last VP8 keyframe that has a hole before it."""
        jb = getattr(receiver, "_RTCRtpReceiver__jitter_buffer", None)
        if jb is None or jb._origin is None:
            return
        packets = _buffered(jb)
        if None not in packets:
            return
        hole = packets.index(None)
        target = None
        for k in range(hole + 1, len(packets)):
            p = packets[k]
            if p is not None and _vp8_keyframe_start(p.payload):
                target = k
        if target is not None:
            jb.remove(target)

    @staticmethod
    def _skip_missing(receiver) -> None:
        """Move aiortc's jitter buffer past the holes of packets that will never arrive.

        Every hole, not the first only: after a burst of loss (a link capped under what it
        was sent: 60 % lost for half a second) the buffer holds dozens, and one per watchdog
        tick (0.25 s) froze the picture 5 s where libwebrtc's frame buffer drops every frame
        it cannot complete once its NACKs time out and decodes from the next keyframe."""
        jb = getattr(receiver, "_RTCRtpReceiver__jitter_buffer", None)
        if jb is None or jb._origin is None:
            return
        packets = _buffered(jb)
        # the first packet after the last hole: the frames the holes cut go with them
        after = next((k for k in range(len(packets) - 1, 0, -1) if packets[k] is not None and packets[k - 1] is None), None)
        if after is not None:
            jb.remove(after)

    async def _route_rtx(self) -> None:
        """Work around aiortc's client-side BUNDLE routing of RTX.

        aiortc registers only each receiver's media SSRC with its RTP router and falls back
        to the payload type for unknown SSRCs, so with several video receivers sharing one
        RTX payload type every retransmission lands on the wrong receiver and is dropped.
        Browsers route by the SSRCs signalled in the answer; do the same here.
        """
        assert self.pc is not None
        for _ in range(200):
            receivers = [t.receiver for t in self.pc.getTransceivers() if t.kind == "video" and t.currentDirection == "recvonly"]
            maps = [(r, r._RTCRtpReceiver__rtx_ssrc) for r in receivers]
            if maps and all(m for _, m in maps):
                for r, m in maps:
                    for rtx_ssrc in m:
                        r.transport._rtp_router.ssrc_table[rtx_ssrc] = r
                return
            await asyncio.sleep(0.05)

    async def _consume(self, track, rec: ReceivedTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                now = time.monotonic()
                if rec.frames == 0:
                    rec.first = now
                rec.frames += 1
                rec.last = now
                if rec.kind == "video":
                    rec.sizes.add((frame.width, frame.height))
                    rec.size = (frame.width, frame.height)
                    if rec.log is not None:
                        rec.log.append((now, rec.size))
        except (MediaStreamError, asyncio.CancelledError):
            pass

    def slot_of(self, participant_id: str, kind: str = "video") -> Optional[dict]:
        for s in self.slots.get(kind, []):
            if s["participant_id"] == participant_id:
                return s
        return None

    def track_for(self, participant_id: str, kind: str = "video") -> Optional[ReceivedTrack]:
        s = self.slot_of(participant_id, kind)
        return self.received.get(s["mid"]) if s else None

    async def inbound_stats(self) -> dict[str, Any]:
        """Per-mid receive statistics of the media SSRC (packetsReceived, packetsLost, jitter).

        Read from the receiver's per-SSRC counters: aiortc's getStats() gives every SSRC of a
        receiver the same stats id, so with RTX in use the RTX stream hides the media one.
        """
        assert self.pc is not None
        out: dict[str, Any] = {}
        for t in self.pc.getTransceivers():
            r = t.receiver
            streams = getattr(r, "_RTCRtpReceiver__remote_streams", {})
            rtx = getattr(r, "_RTCRtpReceiver__rtx_ssrc", {})
            for ssrc, st in streams.items():
                if ssrc not in rtx:
                    out[t.mid] = InboundStats(ssrc, st.packets_received, st.packets_lost, st.jitter)
        return out

    async def close(self) -> None:
        if self.twcc is not None:
            self.twcc.close()
        for task in self._consumers:
            task.cancel()
        if self.ws is not None and not self.ws.closed:
            try:
                await self.send({"type": "leave"})
            except Exception:
                pass
            await self.ws.close()
        if self._reader is not None:
            self._reader.cancel()
        if self.pc is not None:
            await self.pc.close()
        if self.http is not None:
            await self.http.close()
