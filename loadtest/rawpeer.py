"""Lightweight synthetic peers for forwarding benchmarks: real ICE/DTLS/SRTP, no codec.

A `RawPeer` uses a real aiortc RTCPeerConnection (max-bundle, no ICE servers, bound to
127.0.0.1) for ICE, DTLS and the SRTP keys only. Before the connection starts, every
transceiver's `sender.send` / `receiver.receive` is replaced by a no-op so aiortc never runs
an encoder, decoder or its own RTP/RTCP loops; once DTLS is up the nominated ICE pair's
`datagram_received` is hooked so SRTP/SRTCP is handled synchronously with
`media.srtp.SrtpContext` (the same bypass media/transport.py uses on the server side).

Publishing: `VideoSource` writes synthetic VP8 RTP itself: a valid payload descriptor
(X=1, I=1 with a 15-bit PictureID, S=1 on the first packet of a frame), a keyframe header
on keyframes (first frame, once a second, and in answer to PLI/FIR), fixed-size payloads,
paced at a frame rate with a configurable packets/s. Each packet carries an 8-byte send
stamp (CLOCK_MONOTONIC ns) at STAMP_GAP bytes after the VP8 descriptor, so a subscriber on
the same host computes one-way latency. NACKs are answered with RFC 4588 RTX when RTX was
negotiated, as a browser would. `AudioSource` is the Opus-like equivalent (20 ms packets,
stamp at the start of the payload).

Subscribing: `Receiver` decrypts every packet, tracks sequence continuity per SSRC (an
SFU rewrites SSRC/seq per subscriber slot, so each slot is one continuous sequence), reads
the stamp and keeps every latency sample.

Real media (loadtest/media_source.py, loadtest/media_sender.py): `RawPeer(..., media=
SyntheticMedia.load(...), simulcast=True)` publishes pre-encoded VP8 simulcast (q/h/f, one
SSRC + RTX SSRC each, offered like Chrome) and Opus with real audio levels instead of the
fake payloads; `await peer.start_media()` hands its sources to the process's `MediaPacer`.
Receivers then should not look for send stamps (`read_stamps=False`, the default with
`media`); loadtest/measure.py decodes what arrives instead.

Signaling is separate: `HoinghiSite` speaks docs/protocol.md over /ws; loadtest/janus_client.py
drives Janus's VideoRoom with the same peers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import struct
import time
from array import array
from typing import Any, Callable, Optional

import aiohttp
from aiortc import RTCBundlePolicy, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc import sdp as aiortc_sdp

from media import network, rtcp
from media.rtp import URI_ABS_SEND_TIME, URI_AUDIO_LEVEL, URI_MID, URI_RID, URI_RRID, URI_TRANSPORT_CC
from media.srtp import SrtpContext, SrtpError
from media.timing import KernelArrival
from media.transport import hook_srtp_datagrams
from media.twcc import build_feedback

from .media_sender import RID_EXT_ID, RRID_EXT_ID, MediaPacer, OpusLoopSource, SimulcastSource, munge_simulcast_offer
from .media_source import SyntheticMedia, TalkSchedule

logger = logging.getLogger(__name__)

#: Bytes between the end of the VP8 payload descriptor and the send stamp: room for the VP8
#: frame tag (3 bytes) and the keyframe start code + dimensions (7 bytes), which SFUs read.
STAMP_GAP = 10
VP8_DESCRIPTOR_LEN = 4  # X=1 | I=1 with M=1 (15-bit PictureID)
VIDEO_CLOCK = 90000
AUDIO_CLOCK = 48000
MAX_LATENCY_NS = 10_000_000_000  # a "stamp" outside 0..10 s is not one of ours
TWCC_EXT_ID = 5  # extmap id offered for transport-cc (aiortc uses 1..3)
FEEDBACK_MODES = ("twcc", "remb", "rr", "none")

_unpack_q = struct.Struct("!Q").unpack_from
_pack_q = struct.Struct("!Q").pack_into
_pack_hdr = struct.Struct("!BBHII").pack_into
_monotonic_ns = time.monotonic_ns


async def _no_op(*args: object, **kwargs: object) -> None:
    """Stands in for RTCRtpSender.send / RTCRtpReceiver.receive: no codec, no RTP loops."""


# --------------------------------------------------------------------------- transport



def _asks_dtx(sdp: str, mid: Optional[str], payload_type: int) -> bool:
    """Whether the SFU's answer asks this site's Opus encoder for DTX (usedtx=1), as a
    browser reads it from the remote description."""
    if not sdp:
        return False
    for media in aiortc_sdp.SessionDescription.parse(sdp).media:
        if mid is None or media.rtp.muxId == mid:
            for codec in media.rtp.codecs:
                if codec.payloadType == payload_type and str(codec.parameters.get("usedtx")) == "1":
                    return True
    return False

class RawTransport:
    """An aiortc peer connection used for ICE + DTLS + SRTP keys; RTP/RTCP are ours."""

    def __init__(self, bind: tuple[str, ...] = ("127.0.0.1",)) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
        self.bind = bind
        self.rx: Optional[SrtpContext] = None
        self.tx: Optional[SrtpContext] = None
        self._sendto: Optional[Callable] = None
        self._addr: Optional[tuple] = None
        self._armed = False
        self.connected = asyncio.Event()
        self.failed = False
        self.on_rtp: Callable[..., None] = lambda data, plain=True, arrival_ns=0: None  # decrypted RTP
        #: decrypt 1 RTP packet in `decrypt_every`; the others are handed over still encrypted
        #: (RTP headers and header extensions are in the clear in SRTP: enough for sequence
        #: and transport-cc accounting, not for the payload's send stamp)
        self.decrypt_every = 1
        self.rcvbuf = 4 << 20
        self.on_rtcp: Callable[[bytes], None] = lambda data: None  # decrypted RTCP
        #: arrival time (monotonic ns) of the datagram being handled: the kernel's receive stamp
        #: (KernelArrival) once the fast path is up; a link shaper puts its delivery time here
        self.arrival_ns: Callable[[], int] = _monotonic_ns
        self.bad_in = 0
        self.rtcp_in = 0
        self.packets_out = 0
        self.send_errors = 0

    def neuter(self) -> None:
        """Keep aiortc's codecs and RTP loops from ever running; hook the DTLS transport.

        Call after the transceivers exist and before the description that starts the
        connection is applied (setRemoteDescription(answer) for an offerer,
        setLocalDescription(answer) for an answerer).
        """
        transceivers = self.pc.getTransceivers()
        for t in transceivers:
            t.sender.send = _no_op
            t.receiver.receive = _no_op
        if self._armed or not transceivers:
            return
        self._armed = True
        dtls = transceivers[0].receiver.transport
        dtls._handle_rtp_data = self._slow_rtp  # packets that arrive before the fast path
        dtls._handle_rtcp_data = self._slow_rtcp
        dtls.on("statechange", lambda: self._dtls_state(dtls))
        self.pc.on("connectionstatechange", self._pc_state)

    async def _slow_rtp(self, data: bytes, arrival_time_ms: int = 0) -> None:
        self.on_rtp(data)

    async def _slow_rtcp(self, data: bytes) -> None:
        self.rtcp_in += 1
        self.on_rtcp(data)

    def _pc_state(self) -> None:
        if self.pc.connectionState in ("failed", "closed"):
            self.failed = self.pc.connectionState == "failed"
            self._sendto = None

    def _dtls_state(self, dtls) -> None:
        if dtls.state == "connected" and self.tx is None:
            self._install_fast_path(dtls)
        elif dtls.state in ("closed", "failed"):
            self._sendto = None

    def _install_fast_path(self, dtls) -> None:
        self.rx = SrtpContext(dtls._rx_srtp)
        self.tx = SrtpContext(dtls._tx_srtp)
        ice = dtls.transport._connection
        pair = ice._nominated.get(1)
        if pair is None:
            logger.warning("DTLS up but no nominated ICE pair")
            self.failed = True
            return
        unprotect = self.rx.unprotect
        unprotect_rtcp = self.rx.unprotect_rtcp
        on_rtp = self.on_rtp  # bound once: set on_rtp before connecting
        on_rtcp = self.on_rtcp
        every = max(1, self.decrypt_every)
        skip = [0]
        self.kernel_arrival = KernelArrival(pair.protocol.transport.get_extra_info("socket"))
        if self.arrival_ns is _monotonic_ns:  # (a shaper attached earlier keeps its own)
            self.arrival_ns = self.kernel_arrival
        transport = self

        def srtp(data: bytes) -> None:
            b1 = data[1] if len(data) > 1 else 0
            if 192 <= b1 <= 208:
                plain = unprotect_rtcp(data)
                if plain is None:
                    self.bad_in += 1
                else:
                    self.rtcp_in += 1
                    on_rtcp(plain)
            elif every > 1 and skip[0]:
                skip[0] -= 1
                on_rtp(data, False, transport.arrival_ns())
            else:
                skip[0] = every - 1
                plain = unprotect(data)
                if plain is None:
                    self.bad_in += 1
                else:
                    on_rtp(plain, True, transport.arrival_ns())

        # a browser's socket buffer is not the thing under test: a generator hiccup must
        # not turn into "loss" (the kernel caps this at net.core.rmem_max)
        hook_srtp_datagrams(dtls, srtp, rcvbuf=self.rcvbuf)
        protocol = pair.protocol
        self._sendto = protocol.transport.sendto
        self._addr = pair.remote_addr
        self.connected.set()

    def send_rtp(self, packet: bytes | bytearray) -> bool:
        sendto = self._sendto
        if sendto is None:
            return False
        try:
            sendto(self.tx.protect(packet), self._addr)  # type: ignore[union-attr]
        except SrtpError:
            self.send_errors += 1
            return False
        self.packets_out += 1
        return True

    def send_rtcp(self, packet: bytes) -> None:
        sendto = self._sendto
        if sendto is None:
            return
        try:
            sendto(self.tx.protect_rtcp(packet), self._addr)  # type: ignore[union-attr]
        except SrtpError:
            self.send_errors += 1

    async def close(self) -> None:
        self._sendto = None
        try:
            await self.pc.close()
        except Exception:  # a half-open connection must not break teardown of the others
            logger.debug("error closing a peer connection", exc_info=True)


# --------------------------------------------------------------------------- sending


class VideoSource:
    """Synthetic VP8 over RTP: valid descriptor, keyframe headers, a send stamp, no encoder."""

    def __init__(
        self,
        transport: RawTransport,
        ssrc: int,
        payload_type: int,
        *,
        rtx_ssrc: Optional[int] = None,
        rtx_payload_type: Optional[int] = None,
        abs_send_time_id: int = 0,
        payload_size: int = 1000,
        keyframe_interval: float = 1.0,
    ) -> None:
        self.transport = transport
        self.ssrc = ssrc
        self.payload_type = payload_type
        self.rtx_ssrc = rtx_ssrc
        self.rtx_payload_type = rtx_payload_type
        self.keyframe_interval = keyframe_interval
        self.seq = random.getrandbits(16)
        self.ts = random.getrandbits(32)
        self.pid = random.getrandbits(15)
        self.rtx_seq = random.getrandbits(16)
        self._abs_off = 0
        header = bytearray(12)
        if abs_send_time_id:
            header[0] = 0x10
            header += b"\xbe\xde\x00\x01" + bytes([(abs_send_time_id << 4) | 2, 0, 0, 0])
            self._abs_off = 17
        self.header_len = len(header)
        self.payload_size = max(payload_size, VP8_DESCRIPTOR_LEN + STAMP_GAP + 8)
        buf = bytearray(header) + bytes(random.getrandbits(8) for _ in range(self.payload_size))
        buf[0] |= 0x80
        self._buf = buf
        self._desc = self.header_len
        self._stamp = self.header_len + VP8_DESCRIPTOR_LEN + STAMP_GAP
        self._ssrc_bytes = ssrc.to_bytes(4, "big")
        buf[8:12] = self._ssrc_bytes
        self.history: Optional[list] = [None] * 1024 if rtx_ssrc is not None and rtx_payload_type is not None else None
        self.force_keyframe = True
        self.last_keyframe = 0.0
        # counters
        self.packets = 0
        self.frames = 0
        self.keyframes = 0
        self.keyframe_requests = 0
        self.nacked = 0
        self.retransmitted = 0

    def send_frame(self, count: int, now: float) -> None:
        """One frame of `count` packets, back to back (as an encoder hands them over)."""
        if count <= 0:
            return
        key = self.force_keyframe or (self.keyframe_interval and now - self.last_keyframe >= self.keyframe_interval)
        if key:
            self.force_keyframe = False
            self.last_keyframe = now
            self.keyframes += 1
        self.ts = (self.ts + VIDEO_CLOCK // 30) & 0xFFFFFFFF
        buf = self._buf
        d = self._desc
        pid = self.pid
        send = self.transport.send_rtp
        history = self.history
        abs_off = self._abs_off
        stamp_off = self._stamp
        pt = self.payload_type
        for i in range(count):
            seq = self.seq
            _pack_hdr(buf, 0, buf[0], pt | (0x80 if i == count - 1 else 0), seq, self.ts, self.ssrc)
            if abs_off:
                v = int(time.time() * 262144.0) & 0xFFFFFF
                buf[abs_off] = v >> 16
                buf[abs_off + 1] = (v >> 8) & 0xFF
                buf[abs_off + 2] = v & 0xFF
            buf[d] = 0x90 if i == 0 else 0x80  # X, S on the first packet, partition 0
            buf[d + 1] = 0x80  # I: PictureID present
            buf[d + 2] = 0x80 | (pid >> 8)  # M: 15-bit PictureID
            buf[d + 3] = pid & 0xFF
            if i == 0:
                f = d + VP8_DESCRIPTOR_LEN
                if key:
                    # frame tag (P=0 keyframe, show_frame=1), start code, 640x360
                    buf[f : f + 10] = b"\x10\x02\x00\x9d\x01\x2a\x80\x02\x68\x01"
                else:
                    buf[f : f + 3] = b"\x11\x02\x00"
            _pack_q(buf, stamp_off, _monotonic_ns())
            if send(buf):
                self.packets += 1
            if history is not None:
                history[seq & 1023] = bytes(buf)
            self.seq = (seq + 1) & 0xFFFF
        self.pid = (pid + 1) & 0x7FFF
        self.frames += 1

    def on_nack(self, seqs: list[int]) -> None:
        self.nacked += len(seqs)
        history = self.history
        if history is None:
            return
        hl = self.header_len
        for seq in seqs:
            pkt = history[seq & 1023]
            if pkt is None or ((pkt[2] << 8) | pkt[3]) != seq:
                continue
            rtx = bytearray(pkt[:hl])
            rtx[1] = (pkt[1] & 0x80) | self.rtx_payload_type  # type: ignore[operator]
            rtx[2] = self.rtx_seq >> 8
            rtx[3] = self.rtx_seq & 0xFF
            rtx[8:12] = self.rtx_ssrc.to_bytes(4, "big")  # type: ignore[union-attr]
            rtx += pkt[2:4]
            rtx += pkt[hl:]
            self.rtx_seq = (self.rtx_seq + 1) & 0xFFFF
            if self.transport.send_rtp(rtx):
                self.retransmitted += 1

    def request_keyframe(self) -> None:
        self.keyframe_requests += 1
        self.force_keyframe = True


class AudioSource:
    """Opus-like packets every 20 ms with a send stamp at the start of the payload."""

    def __init__(self, transport: RawTransport, ssrc: int, payload_type: int, *, audio_level_id: int = 0, payload_size: int = 100) -> None:
        self.transport = transport
        self.ssrc = ssrc
        self.payload_type = payload_type
        self.seq = random.getrandbits(16)
        self.ts = random.getrandbits(32)
        header = bytearray(12)
        if audio_level_id:
            header[0] = 0x10
            header += b"\xbe\xde\x00\x01" + bytes([(audio_level_id << 4) | 0, 0x80 | 30, 0, 0])
        self.header_len = len(header)
        buf = header + bytes(random.getrandbits(8) for _ in range(max(payload_size, 8)))
        buf[0] |= 0x80
        self._buf = buf
        self.packets = 0

    def send_packet(self) -> None:
        buf = self._buf
        self.ts = (self.ts + AUDIO_CLOCK // 50) & 0xFFFFFFFF
        _pack_hdr(buf, 0, buf[0], self.payload_type, self.seq, self.ts, self.ssrc)
        _pack_q(buf, self.header_len, _monotonic_ns())
        if self.transport.send_rtp(buf):
            self.packets += 1
        self.seq = (self.seq + 1) & 0xFFFF


# --------------------------------------------------------------------------- receiving


class StreamStat:
    """Sequence continuity of one received SSRC (one subscriber slot)."""

    __slots__ = ("ssrc", "video", "rtx", "last", "ext", "first_ext", "received", "dups", "late")

    def __init__(self, ssrc: int, video: bool, seq: int, rtx: bool = False) -> None:
        self.ssrc = ssrc
        self.video = video
        self.rtx = rtx  # retransmissions / probing padding: counted apart from media
        self.last = seq
        self.ext = seq  # extended highest sequence number
        self.first_ext = seq
        self.received = 0
        self.dups = 0
        self.late = 0


class Receiver:
    """What one subscriber gets: packets, per-SSRC loss, one-way latency samples (ns).

    With `tcc_id` set it also records (transport-wide seq, arrival) for transport-cc
    feedback, which `twcc_feedback` turns into RTPFB FMT=15 packets as a browser would.
    """

    def __init__(self) -> None:
        self.video_pts: set[int] = set()
        self.rtx_pts: set[int] = set()
        self.streams: dict[int, StreamStat] = {}
        self.rtx: dict[int, StreamStat] = {}
        self.rtx_packets = 0
        self.packets = 0
        self.bytes = 0
        self.bad_stamps = 0
        #: False when the media is real (pre-encoded): there is no send stamp to read
        self.read_stamps = True
        self.latency = array("q")
        self.tcc_id = 0
        self.tcc: list[tuple[int, int]] = []  # (transport seq, arrival ns) since the last feedback
        self._tcc_next: Optional[int] = None
        self._fb_count = 0
        self._rr_prior: dict[int, tuple[int, int]] = {}

    def on_rtp(self, p: bytes, plain: bool = True, arrival_ns: int = 0) -> None:
        """Account one packet; `plain` False: still SRTP (header usable, payload not);
        `arrival_ns`: when it arrived (monotonic ns; 0: now)."""
        now = arrival_ns or _monotonic_ns()
        ssrc = (p[8] << 24) | (p[9] << 16) | (p[10] << 8) | p[11]
        seq = (p[2] << 8) | p[3]
        st = self.streams.get(ssrc)
        if st is None:
            st = self.rtx.get(ssrc)
            if st is None:
                pt = p[1] & 0x7F
                st = StreamStat(ssrc, pt in self.video_pts, seq, pt in self.rtx_pts)
                if st.rtx:
                    self.rtx[ssrc] = st
                else:
                    self.streams[ssrc] = st
        else:
            d = (seq - st.last) & 0xFFFF
            if d == 0:
                st.dups += 1
                return
            if d < 0x8000:
                st.ext += d
                st.last = seq
            else:
                st.late += 1
        st.received += 1
        if st.rtx:
            self.rtx_packets += 1
        else:
            self.packets += 1
        n = len(p)
        self.bytes += n
        b0 = p[0]
        off = 12 + ((b0 & 0x0F) << 2)
        if b0 & 0x10:
            end = off + 4 + (((p[off + 2] << 8) | p[off + 3]) << 2)
            tcc_id = self.tcc_id
            if tcc_id and p[off] == 0xBE and p[off + 1] == 0xDE:
                i = off + 4
                while i < end:
                    h = p[i]
                    if h == 0:
                        i += 1
                        continue
                    eid = h >> 4
                    if eid == tcc_id:
                        self.tcc.append(((p[i + 1] << 8) | p[i + 2], now))
                        break
                    if eid == 15:
                        break
                    i += 2 + (h & 0x0F)
            off = end
        if not plain or st.rtx or not self.read_stamps:
            return
        if b0 & 0x20:
            n -= p[-1]
        if st.video:
            if off >= n:
                return
            d0 = p[off]
            off += 1
            if d0 & 0x80:
                x = p[off]
                off += 1
                if x & 0x80:
                    off += 2 if p[off] & 0x80 else 1
                if x & 0x40:
                    off += 1
                if x & 0x30:
                    off += 1
            off += STAMP_GAP
        if off + 8 <= n:
            lat = now - _unpack_q(p, off)[0]
            if 0 <= lat < MAX_LATENCY_NS:
                self.latency.append(lat)
                return
        self.bad_stamps += 1

    def twcc_feedback(self, sender_ssrc: int) -> Optional[bytes]:
        """One transport-cc feedback packet for everything received since the last one."""
        pending = self.tcc
        if not pending:
            return None
        self.tcc = []
        base = self._tcc_next if self._tcc_next is not None else pending[0][0]
        arrivals: dict[int, int] = {}
        for seq, t in pending:
            k = (seq - base) & 0xFFFF
            if k < 0x8000:  # else: reported (as lost) in an earlier feedback
                arrivals[k] = t
        if not arrivals:
            return None
        count = max(arrivals) + 1
        if count > 8000:  # a restart or a wild jump: begin again from what arrived
            base = pending[0][0]
            arrivals = {(seq - base) & 0xFFFF: t for seq, t in pending if ((seq - base) & 0xFFFF) < 8000}
            count = max(arrivals) + 1
        self._tcc_next = (base + count) & 0xFFFF
        media_ssrc = next(iter(self.streams), 0)
        packet = build_feedback(
            sender_ssrc, media_ssrc, base, [arrivals[k] / 1e9 if k in arrivals else None for k in range(count)], self._fb_count
        )
        self._fb_count += 1
        return packet

    def report_blocks(self) -> list[rtcp.ReportBlock]:
        blocks = []
        for s in list(self.streams.values())[:31]:
            expected = s.ext - s.first_ext + 1
            lost = expected - s.received
            e0, r0 = self._rr_prior.get(s.ssrc, (0, 0))
            de, dr = expected - e0, s.received - r0
            self._rr_prior[s.ssrc] = (expected, s.received)
            fraction = min(255, ((de - dr) << 8) // de) if de > 0 and de > dr else 0
            blocks.append(rtcp.ReportBlock(s.ssrc, fraction, lost, s.ext & 0xFFFFFFFF, 0, 0, 0))
        return blocks

    def snapshot(self) -> dict[int, tuple[int, int]]:
        return {s.ssrc: (s.received, s.ext) for s in self.streams.values()}


def window_loss(before: dict[int, tuple[int, int]], receiver: Receiver) -> tuple[int, int]:
    """(expected, received) per sequence numbers between a snapshot and now, all SSRCs."""
    expected = received = 0
    for s in receiver.streams.values():
        if s.ssrc in before:
            r0, e0 = before[s.ssrc]
        else:
            r0, e0 = 0, s.first_ext - 1
        expected += s.ext - e0
        received += s.received - r0
    return expected, received


# --------------------------------------------------------------------------- a peer


class RawPeer:
    """One synthetic endpoint: publishes synthetic media and/or receives it."""

    def __init__(
        self,
        name: str,
        *,
        publish_video: bool = True,
        publish_audio: bool = False,
        video_slots: int = 0,
        audio_slots: int = 0,
        payload_size: int = 1000,
        feedback: str = "twcc",
        decrypt_every: int = 1,
        bind: tuple[str, ...] = ("127.0.0.1",),
        media: Optional[SyntheticMedia] = None,
        simulcast: bool = False,
        talk: Optional[TalkSchedule] = None,
        site_id: Optional[str] = None,
        read_stamps: Optional[bool] = None,
        seed: Optional[int] = None,
        dtx: Optional[bool] = None,
    ) -> None:
        """`media`: send pre-encoded VP8/Opus from this cache (else fake payloads);
        `simulcast`: offer and send all its layers like a browser (needs `media`); without
        it one encoding, the top layer, is sent. `talk`: when the microphone carries speech.
        `site_id`: key under which the camera's FrameClock is registered (media_source.CLOCKS).
        """
        if feedback not in FEEDBACK_MODES:
            raise ValueError(f"feedback must be one of {FEEDBACK_MODES}")
        if simulcast and media is None:
            raise ValueError("simulcast needs media=SyntheticMedia.load(...)")
        self.media = media
        self.simulcast = simulcast
        self.talk = talk
        self.site_id = site_id
        self.seed = seed
        self.dtx = dtx  # Opus DTX while silent; None: as the answer asks (usedtx=1), like a browser
        self.simulcast_source: Optional[SimulcastSource] = None
        self.audio_source: Optional[OpusLoopSource] = None
        self.pacer: Optional[MediaPacer] = None
        self.answer_sdp = ""  # kept for loadtest/measure.py (slot mid -> SSRC)
        self.name = name
        self.feedback = feedback
        self.rtcp_ssrc = random.getrandbits(32) | 1
        self.publish_video = publish_video
        self.publish_audio = publish_audio
        self.video_slots = video_slots
        self.audio_slots = audio_slots
        self.payload_size = payload_size
        self.bind = bind
        self.transport = RawTransport(bind)
        self.receiver = Receiver()
        self.video: Optional[VideoSource] = None
        self.audio: Optional[AudioSource] = None
        self.receiver.read_stamps = (media is None) if read_stamps is None else read_stamps
        self.transport.on_rtp = self.receiver.on_rtp
        self.transport.decrypt_every = decrypt_every
        self.transport.on_rtcp = self._on_rtcp
        self.rtcp_errors = 0
        self.twcc_sent = 0
        self.reports_sent = 0

    @property
    def pc(self) -> RTCPeerConnection:
        return self.transport.pc

    # ------------------------------------------------------------ SDP

    async def create_offer(self) -> str:
        """Transceivers in the protocol's order; returns the complete (non-trickle) offer."""
        pc = self.pc
        if self.publish_audio:
            pc.addTransceiver("audio", direction="sendonly")
        if self.publish_video:
            pc.addTransceiver("video", direction="sendonly")
        for _ in range(self.video_slots):
            pc.addTransceiver("video", direction="recvonly")
        for _ in range(self.audio_slots):
            pc.addTransceiver("audio", direction="recvonly")
        self.transport.neuter()
        with network.bind_addresses(list(self.bind)):
            await pc.setLocalDescription(await pc.createOffer())
        sdp = pc.localDescription.sdp
        if self.simulcast and self.publish_video:
            t = next(t for t in pc.getTransceivers() if t.kind == "video" and t.direction == "sendonly")
            sdp = munge_simulcast_offer(sdp, t.mid, self.media.rids)  # type: ignore[union-attr]
        if self.feedback == "twcc":
            # aiortc offers neither the transport-cc extension nor its rtcp-fb; a browser
            # offers both on every m-section. Offer them on the receive sections (what the
            # SFU sends us); aiortc's own state does not need to know.
            sdp = add_transport_cc(sdp, TWCC_EXT_ID)
            self.receiver.tcc_id = TWCC_EXT_ID
        return sdp

    async def accept_answer(self, sdp: str) -> None:
        self.answer_sdp = sdp
        self.transport.neuter()
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        self._setup_media()

    async def answer_offer(self, sdp: str) -> str:
        """Answer an SFU's offer (Janus subscribers): receive everything offered."""
        pc = self.pc
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        for t in pc.getTransceivers():
            if t.direction in ("sendrecv", "recvonly"):
                t.direction = "recvonly"
        self.transport.neuter()
        with network.bind_addresses(list(self.bind)):
            await pc.setLocalDescription(await pc.createAnswer())
        self._setup_media()
        answer = pc.localDescription.sdp
        if self.feedback == "twcc":
            # aiortc's answer drops transport-cc; a browser accepts it, so answer as one would
            answer, ext_id = accept_transport_cc(answer, sdp)
            self.receiver.tcc_id = ext_id
        return answer

    def send_feedback(self, twcc: bool = True, reports: bool = False) -> None:
        """Called by FeedbackTicker: transport-cc every ~100 ms, RR (+REMB) every ~1 s."""
        tr = self.transport
        if twcc and self.receiver.tcc_id:
            packet = self.receiver.twcc_feedback(self.rtcp_ssrc)
            if packet is not None:
                tr.send_rtcp(packet)
                self.twcc_sent += 1
        if reports and self.feedback != "none" and self.receiver.streams:
            packet = rtcp.pack_rr(self.rtcp_ssrc, self.receiver.report_blocks())
            if self.feedback == "remb":
                ssrcs = [s.ssrc for s in self.receiver.streams.values() if s.video]
                packet += rtcp.pack_remb(self.rtcp_ssrc, 50_000_000, ssrcs)
            tr.send_rtcp(packet)
            self.reports_sent += 1

    def _setup_media(self) -> None:
        for t in self.pc.getTransceivers():
            codecs = [c for c in t._codecs if not c.mimeType.lower().endswith("/rtx")]
            if not codecs:
                continue
            main = codecs[0]
            if t.kind == "video":
                self.receiver.video_pts.update(c.payloadType for c in codecs)
            self.receiver.rtx_pts.update(c.payloadType for c in t._codecs if c.mimeType.lower().endswith("/rtx"))
            sending = t.direction in ("sendonly", "sendrecv") and (t.currentDirection or t.direction) in ("sendonly", "sendrecv")
            if not sending:
                continue
            exts = {x.uri: x.id for x in t._headerExtensions}
            if self.media is not None:
                self._setup_real_media(t, main, exts)
                continue
            if t.kind == "video" and self.publish_video and self.video is None:
                if main.mimeType.lower() != "video/vp8":
                    raise RuntimeError(f"{self.name}: video codec negotiated is {main.mimeType}, not VP8")
                rtx = next(
                    (c for c in t._codecs if c.mimeType.lower() == "video/rtx" and c.parameters.get("apt") == main.payloadType),
                    None,
                )
                self.video = VideoSource(
                    self.transport,
                    t.sender._ssrc,
                    main.payloadType,
                    rtx_ssrc=t.sender._rtx_ssrc if rtx else None,
                    rtx_payload_type=rtx.payloadType if rtx else None,
                    abs_send_time_id=exts.get(URI_ABS_SEND_TIME, 0),
                    payload_size=self.payload_size,
                )
            elif t.kind == "audio" and self.publish_audio and self.audio is None:
                self.audio = AudioSource(
                    self.transport, t.sender._ssrc, main.payloadType, audio_level_id=exts.get(URI_AUDIO_LEVEL, 0)
                )

    def _setup_real_media(self, t, main, exts: dict[str, int]) -> None:
        media = self.media
        assert media is not None
        rtx = next(
            (c for c in t._codecs if c.mimeType.lower().endswith("/rtx") and c.parameters.get("apt") == main.payloadType), None
        )
        if t.kind == "video" and self.publish_video and self.simulcast_source is None:
            if main.mimeType.lower() != "video/vp8":
                raise RuntimeError(f"{self.name}: video codec negotiated is {main.mimeType}, not VP8")
            common = dict(
                rtx_payload_type=rtx.payloadType if rtx else None,
                mid=t.mid,
                mid_id=exts.get(URI_MID, 0),
                abs_id=exts.get(URI_ABS_SEND_TIME, 0),
                site_id=self.site_id,
                seed=self.seed,
            )
            if self.simulcast:
                # aiortc's answer parser keeps only the extensions it knows: the rid ids are
                # the ones this peer offered (the SFU echoes them)
                self.simulcast_source = SimulcastSource(
                    self.transport, media, main.payloadType, rids=media.rids,
                    rid_id=exts.get(URI_RID, RID_EXT_ID), rrid_id=exts.get(URI_RRID, RRID_EXT_ID), **common,
                )
                asked = getattr(self, "publish_layers", None)  # a publish_layers that came before the answer
                if asked is not None:
                    self.simulcast_source.set_active(asked)
            else:
                ssrcs = [(t.sender._ssrc, t.sender._rtx_ssrc if rtx else None)]
                self.simulcast_source = SimulcastSource(
                    self.transport, media, main.payloadType, ssrcs=ssrcs, layer_indexes=[len(media.layers) - 1], **common
                )
        elif t.kind == "audio" and self.publish_audio and self.audio_source is None:
            self.audio_source = OpusLoopSource(
                self.transport, media, t.sender._ssrc, main.payloadType, mid=t.mid, mid_id=exts.get(URI_MID, 0),
                audio_level_id=exts.get(URI_AUDIO_LEVEL, 0), talk=self.talk, seed=self.seed,
                dtx=self.dtx if self.dtx is not None else _asks_dtx(self.answer_sdp, t.mid, main.payloadType),
            )

    async def start_media(self, pacer: Optional[MediaPacer] = None) -> None:
        """Hand the real-media sources to `pacer` (default: the loop's shared one).

        Call once the answer is applied; sending starts at the next tick (the FrameClock's
        start), packets before DTLS is up are dropped by the transport as with any source.
        """
        self.pacer = pacer or MediaPacer.shared()
        self.pacer.add(self.simulcast_source, self.audio_source)

    # ------------------------------------------------------------ RTCP from the SFU

    def _on_rtcp(self, data: bytes) -> None:
        on_sr = getattr(self.receiver, "on_sr", None)
        if on_sr is not None:  # slots' sender reports: latency from RTP time (loadtest.sitesim)
            try:
                for item in rtcp.parse_compound(data):
                    if isinstance(item, rtcp.SenderReport):
                        on_sr(item.ssrc, item.ntp, item.rtp_ts)
            except ValueError:
                pass
        sc = self.simulcast_source
        if sc is not None:
            try:
                for item in rtcp.parse_compound(data):
                    if isinstance(item, rtcp.Pli):
                        sc.request_keyframe(item.media_ssrc)
                    elif isinstance(item, rtcp.Fir):
                        for ssrc, _ in item.entries:
                            sc.request_keyframe(ssrc)
                    elif isinstance(item, rtcp.Nack):
                        sc.on_nack(item.media_ssrc, item.lost)
            except ValueError:
                self.rtcp_errors += 1
            return
        v = self.video
        if v is None:
            return
        try:
            for item in rtcp.parse_compound(data):
                if isinstance(item, rtcp.Pli):
                    if item.media_ssrc == v.ssrc:
                        v.request_keyframe()
                elif isinstance(item, rtcp.Fir):
                    if any(ssrc == v.ssrc for ssrc, _ in item.entries):
                        v.request_keyframe()
                elif isinstance(item, rtcp.Nack):
                    if item.media_ssrc == v.ssrc:
                        v.on_nack(item.lost)
        except ValueError:
            self.rtcp_errors += 1

    async def wait_connected(self, timeout: float = 30.0) -> None:
        await asyncio.wait_for(self.transport.connected.wait(), timeout)

    async def close(self) -> None:
        if self.pacer is not None:
            self.pacer.remove(self.simulcast_source, self.audio_source)
        await self.transport.close()


# --------------------------------------------------------------------------- pacing


class Pacer:
    """Drives every publisher from one timer: frames at `fps`, `rate` packets/s per publisher.

    One task for all publishers keeps the generator cheap; fractional packets per frame are
    carried over so the long-run rate is exact. If the loop falls more than half a second
    behind, it resynchronises instead of bursting (and counts it: the generator is overloaded).
    """

    def __init__(self, fps: float = 30.0, rate: float = 130.0, audio: bool = True) -> None:
        self.fps = fps
        self.rate = rate
        self.audio = audio
        self.sources: list[VideoSource] = []
        self.audio_sources: list[AudioSource] = []
        self.resyncs = 0
        self.late_ticks = 0
        self._task: Optional[asyncio.Task] = None
        self._audio_task: Optional[asyncio.Task] = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._video_loop())
        if self._audio_task is None:
            self._audio_task = asyncio.ensure_future(self._audio_loop())

    async def _video_loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_t = loop.time()
        carry = 0.0
        while True:
            carry += self.rate / self.fps
            count = int(carry)
            carry -= count
            now = loop.time()
            for s in self.sources:
                s.send_frame(count, now)
            next_t += 1.0 / self.fps
            delay = next_t - loop.time()
            if delay < -0.5:
                self.resyncs += 1
                next_t = loop.time()
                delay = 0
            elif delay < -0.010:
                self.late_ticks += 1
            await asyncio.sleep(max(0.0, delay))

    async def _audio_loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_t = loop.time()
        while True:
            for a in self.audio_sources:
                a.send_packet()
            next_t += 0.02
            delay = next_t - loop.time()
            if delay < -0.5:
                next_t = loop.time()
                delay = 0
            await asyncio.sleep(max(0.0, delay))

    async def stop(self) -> None:
        for task in (self._task, self._audio_task):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        self._task = self._audio_task = None


def add_transport_cc(sdp: str, ext_id: int) -> str:
    """Offer transport-cc (extmap + rtcp-fb on every non-RTX codec) on recvonly m-sections."""
    out: list[str] = []
    sections: list[list[str]] = [[]]
    for line in sdp.split("\r\n"):
        if line.startswith("m="):
            sections.append([])
        sections[-1].append(line)
    out += sections[0]
    for sec in sections[1:]:
        if "a=recvonly" in sec:
            pts = sec[0].split()[3:]
            rtx = {ln.split(":", 1)[1].split()[0] for ln in sec if ln.startswith("a=rtpmap:") and "rtx/" in ln.lower()}
            extra_fb = [f"a=rtcp-fb:{pt} transport-cc" for pt in pts if pt not in rtx]
            new: list[str] = []
            ext_done = False
            for line in sec:
                if not ext_done and (line.startswith("a=rtpmap:") or line.startswith("a=ssrc")):
                    new.append(f"a=extmap:{ext_id} {URI_TRANSPORT_CC}")
                    ext_done = True
                new.append(line)
            if not ext_done:
                new.append(f"a=extmap:{ext_id} {URI_TRANSPORT_CC}")
            new += extra_fb
            sec = new
        out += sec
    text = "\r\n".join(out)
    return text


def _sections(sdp: str) -> list[list[str]]:
    sections: list[list[str]] = [[]]
    for line in sdp.split("\r\n"):
        if line.startswith("m="):
            sections.append([])
        sections[-1].append(line)
    return sections


def accept_transport_cc(answer: str, offer: str) -> tuple[str, int]:
    """Add the offer's transport-cc extmap and rtcp-fb to the answer's m-sections."""
    ext_id = 0
    for sec in _sections(offer)[1:]:
        for line in sec:
            if line.startswith("a=extmap:") and line.endswith(" " + URI_TRANSPORT_CC):
                ext_id = int(line[9:].split()[0].split("/")[0])
    if not ext_id:
        return answer, 0
    out = _sections(answer)
    lines = list(out[0])
    for sec in out[1:]:
        pts = sec[0].split()[3:]
        rtx = {ln.split(":", 1)[1].split()[0] for ln in sec if ln.startswith("a=rtpmap:") and "rtx/" in ln.lower()}
        new = []
        done = False
        for line in sec:
            if not done and line.startswith("a=rtpmap:"):
                new.append(f"a=extmap:{ext_id} {URI_TRANSPORT_CC}")
                done = True
            new.append(line)
        new += [f"a=rtcp-fb:{pt} transport-cc" for pt in pts if pt not in rtx]
        lines += new
    return "\r\n".join(lines), ext_id


class FeedbackTicker:
    """Sends every receiving peer's RTCP from one timer (cheap for hundreds of peers)."""

    def __init__(self, peers: list["RawPeer"], twcc_interval: float = 0.1, report_interval: float = 1.0) -> None:
        self.peers = peers
        self.twcc_interval = twcc_interval
        self.report_interval = report_interval
        self._task: Optional[asyncio.Task] = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_report = loop.time() + self.report_interval * random.random()
        while True:
            await asyncio.sleep(self.twcc_interval)
            reports = loop.time() >= next_report
            if reports:
                next_report += self.report_interval
            for p in self.peers:
                try:
                    p.send_feedback(twcc=True, reports=reports)
                except Exception:  # one peer's bad state must not stop everyone's feedback
                    logger.exception("feedback for %s failed", p.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None


# --------------------------------------------------------------------------- hoinghi signaling


class HoinghiSite(RawPeer):
    """A raw peer that joins hoinghi through /ws exactly as docs/protocol.md describes."""

    def __init__(self, http: aiohttp.ClientSession, base_url: str, token: str, name: str, **kw: Any) -> None:
        super().__init__(name, **kw)
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.ws: Optional[aiohttp.ClientWebSocketResponse] = None
        self.joined: dict = {}
        self.slots: dict = {"video": [], "audio": []}
        self.errors: list[dict] = []
        self.link_stats: Optional[dict] = None  # the server's view of this site's link (link_stats.self)
        self.publish_layers: Optional[list[str]] = None  # the last `publish_layers` (rids asked for)
        self._reader: Optional[asyncio.Task] = None
        self._waiters: list[tuple[str, asyncio.Future]] = []

    async def _read(self) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            t = data.get("type")
            if t == "slots":
                self.slots = {"video": data["video"], "audio": data["audio"]}
            elif t == "error":
                self.errors.append(data)
            elif t == "link_stats":
                self.link_stats = data.get("self")
            elif t == "publish_layers" and data.get("kind") == "video":
                self.publish_layers = list(data.get("active") or [])
                if self.simulcast_source is not None:
                    self.simulcast_source.set_active(self.publish_layers)
            for waiter in list(self._waiters):
                if waiter[0] == t or (t == "error" and data.get("fatal")):
                    self._waiters.remove(waiter)
                    if not waiter[1].done():
                        waiter[1].set_result(data)
        for _, fut in self._waiters:
            if not fut.done():
                fut.set_exception(ConnectionError("signaling closed"))

    async def _request(self, message: dict, reply: str, timeout: float) -> dict:
        assert self.ws is not None
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._waiters.append((reply, fut))
        await self.ws.send_str(json.dumps(message))
        data = await asyncio.wait_for(fut, timeout)
        if data.get("type") == "error":
            raise RuntimeError(f"{self.name}: {message['type']} refused: {data.get('code')}: {data.get('message')}")
        return data

    async def join(self, timeout: float = 20.0) -> dict:
        ws_url = self.base_url.replace("http://", "ws://") + "/ws"
        self.ws = await self.http.ws_connect(ws_url, max_msg_size=1 << 20)
        self._reader = asyncio.ensure_future(self._read())
        self.joined = await self._request({"type": "join", "token": self.token, "name": self.name, "protocol": 1}, "joined", timeout)
        if self.site_id is None:
            self.site_id = self.joined["participant"].get("site_id")
        allowed = self.joined["slots"]
        self.video_slots = min(self.video_slots, allowed["video"])
        self.audio_slots = min(self.audio_slots, allowed["audio"])
        return self.joined

    async def negotiate(self, timeout: float = 30.0) -> None:
        offer = await self.create_offer()
        answer = await self._request({"type": "offer", "sdp": offer}, "answer", timeout)
        await self.accept_answer(answer["sdp"])

    @property
    def participant_id(self) -> str:
        return self.joined["participant"]["id"]

    async def close(self) -> None:
        if self.ws is not None and not self.ws.closed:
            try:
                await self.ws.send_str(json.dumps({"type": "leave"}))
            except Exception:
                pass
            await self.ws.close()
        if self._reader is not None:
            self._reader.cancel()
        await super().close()
