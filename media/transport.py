"""A participant's WebRTC transport: aiortc for ICE, DTLS, SRTP keys and SDP; RTP is ours.

aiortc's RTCRtpReceiver always decodes and its RTCRtpSender runs its own RTP/RTCP loops, so
neither may run for forwarded media. After negotiation this class replaces every
transceiver's `receiver.receive` and `sender.send` with no-ops (no decoder thread, no
encoder, no sender reports with zero counts), and once DTLS is up it takes datagrams
straight from the nominated ICE pair's socket protocol: SRTP/SRTCP are decrypted and handled
synchronously in the datagram callback, without aioice's queue, aiortc's RTP parse and
router, or a task switch. STUN and DTLS still take aioice's and aiortc's normal paths.

Sending is the mirror image: SRTP-protect into a reusable buffer and `sendto` on the
nominated pair's datagram transport.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from bisect import bisect_left
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Optional

from aiortc import RTCBundlePolicy, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.rtcrtpparameters import RTCRtcpFeedback, RTCRtpHeaderExtensionParameters

from . import network, rtcp
from .allocator import StreamAllocator
from .consumer import Consumer
from .estimator import BandwidthEstimator
from .fastpath import NATIVE, SendCore, srtp_addresses
from .producer import Producer, RecvStream
from .rtp import URI_ABS_SEND_TIME, URI_AUDIO_LEVEL, URI_TRANSPORT_CC, WIRE_OVERHEAD, RtpInfo, ext_table, parse_rtp
from .sdp import (
    CODEC_FOR_KIND,
    PUBLISH_EXTENSIONS,
    SLOT_EXTENSIONS,
    OfferError,
    OfferInfo,
    Section,
    add_fmtp,
    add_simulcast_answer,
    inspect_offer,
)
from .srtp import SrtpContext, SrtpError
from .timing import LATENCY_BOUNDS_S, KernelArrival
from .twcc import HISTORY_SIZE, SendHistory, parse_arrivals

if TYPE_CHECKING:
    from .router import Router

logger = logging.getLogger(__name__)

RTCP_INTERVAL = 1.0  # mean seconds between receiver/sender reports


@dataclass
class MediaSettings:
    """What the forwarding core needs from the server's configuration."""

    bind_addresses: Optional[list[str]] = None  # None: aioice's default (all non-loopback)
    announce_ip: Optional[str] = None  # rewrite host candidates to this address (NAT 1:1)
    video_slots: int = 9
    audio_slots: int = 3
    publisher_max_bitrate: int = 2_500_000  # REMB sent to publishers, bit/s
    start_bitrate_kbps: int = 1000  # x-google-start-bitrate hint in answers
    opus_dtx: bool = True  # ask publishers for Opus DTX (usedtx=1): silence costs ~2.5 pkt/s
    ice_servers: list[dict] = field(default_factory=list)
    port_range: Optional["network.PortRange"] = None  # None: any UDP port (aioice's default)


async def _no_op(*args: object, **kwargs: object) -> None:
    """Stands in for RTCRtpSender.send / RTCRtpReceiver.receive on forwarded streams."""


def hook_srtp_datagrams(dtls, on_srtp: Callable[[bytes], None], rcvbuf: int = 0):
    """Route SRTP/SRTCP datagrams of `dtls`'s ICE connection straight to `on_srtp`.

    Hooks the nominated pair's protocol (skipping aioice's STUN parse and queue) and, as a
    fallback for any other pair, the connection's data_received. STUN (first byte 0..3) and
    DTLS (20..63) keep their normal path. Returns the nominated pair, or None if there is none.
    Shared by the server's transports and the load generator's raw peers.
    """
    ice = dtls.transport._connection
    pair = ice._nominated.get(1)
    if pair is None:
        return None
    original_data_received = ice.data_received

    def data_received(data: bytes, component: int) -> None:
        if 127 < data[0] < 192:
            on_srtp(data)
        else:
            original_data_received(data, component)

    ice.data_received = data_received
    protocol = pair.protocol
    original_datagram_received = protocol.datagram_received

    def datagram_received(data: bytes, addr: tuple) -> None:
        # RTP/RTCP first byte is 128..191; STUN is 0..3, DTLS 20..63
        if 127 < data[0] < 192:
            on_srtp(data)
        else:
            original_datagram_received(data, addr)

    protocol.datagram_received = datagram_received
    if rcvbuf:
        sock = protocol.transport.get_extra_info("socket")
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        except (OSError, AttributeError):
            pass
    return pair


class WebRtcTransport(SendCore):
    """One site's peer connection. The send path (`send_rtp`, `_send_now`) is native
    (SendCore, media/_fastpath.c) when built, else `_send_rtp_py`/`_send_now_py`."""

    def __init__(self, router: "Router", participant_id: str, settings: MediaSettings) -> None:
        self.router = router
        self.participant_id = participant_id
        self.settings = settings
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
        self.rtcp_ssrc = random.getrandbits(32) | 1
        self.cname = f"hoinghi-{participant_id[:16]}"
        self.producers: dict[str, Producer] = {}
        self._producers_by_mid: dict[str, Producer] = {}
        self.consumers: dict[str, list[Consumer]] = {"audio": [], "video": []}
        self._media_streams: dict[int, RecvStream] = {}
        self._rtx_streams: dict[int, RecvStream] = {}
        self._consumer_by_ssrc: dict[int, Consumer] = {}
        self.ext_kinds: list[int] = ext_table({})
        self._rx: Optional[SrtpContext] = None
        self._kernel_arrival = KernelArrival(None)  # the socket's, once the fast path is up
        self._tx: Optional[SrtpContext] = None
        self._sendto: Optional[Callable] = None
        self._addr: Optional[tuple] = None
        self._rtcp_task: Optional[asyncio.Task] = None
        self.negotiated = False
        self.slots_sent: Optional[dict] = None  # last slot map told to the client
        self.publish_layers_sent: Optional[list[str]] = None  # last layer list told to the publisher
        self.connected = asyncio.Event()
        self.closed = False
        self.on_state: Optional[Callable[[str], None]] = None
        self.rtt = 0.0
        self.remb = 0
        # downlink congestion control toward this site
        now = time.monotonic()
        self.estimator = BandwidthEstimator(now)
        self.allocator = StreamAllocator(self)
        self.twcc_history = SendHistory()
        self.twcc = False
        self.twcc_feedbacks = 0
        self._rate_mark = (now, 0)
        self._send_bps = 0.0
        self._probe_rr = 0
        self._remb_parts: dict[tuple, tuple] = {}
        self._pace_rate = 0.0
        self._pace_burst = self.PACE_BURST_MIN
        self._pace_late = self.PACE_BURST_MIN
        self._pace_tokens = 0.0
        self._pace_time = now
        self._pace_queue: deque = deque()
        self._pace_queued_bytes = 0
        self._wire_overhead = WIRE_OVERHEAD
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self.pace_dropped = 0  # ssrcs -> (value, congested, time, octets, send bps)
        # how long sent packets waited in the pacer: counts per LATENCY_BOUNDS_S bucket (the
        # last one: longer), for packets that queued at all; the rest went out at once. What
        # the SFU itself adds to latency, apart from its event loop's own lag
        self.pace_waited = [0] * (len(LATENCY_BOUNDS_S) + 1)
        self.pace_wait_s = 0.0
        # counters for metrics and benchmarks
        self.packets_in = 0
        self.bytes_in = 0
        self.packets_out = 0
        self.bytes_out = 0
        self.rtcp_in = 0
        self.dropped_in = 0
        self.send_errors = 0

    # ---------------------------------------------------------------- negotiation

    async def negotiate(self, offer_sdp: str) -> str:
        """Accept a site's offer; return the answer SDP. Raises OfferError with a reason."""
        s = self.settings
        info = inspect_offer(offer_sdp, s.video_slots, s.audio_slots)
        pc = self.pc
        exhausted = s.port_range.exhausted if s.port_range is not None else 0
        try:
            with network.bind_addresses(s.bind_addresses), network.port_range(s.port_range):
                await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
                transceivers = pc.getTransceivers()
                by_mid = {t.mid: t for t in transceivers}
                for section in info.sections:
                    self._configure(by_mid[section.mid], section)
                answer = await pc.createAnswer()
                await pc.setLocalDescription(answer)
        except OfferError:
            raise
        except Exception as exc:
            raise OfferError(f"the offer could not be applied ({type(exc).__name__}: {str(exc)[:160]})") from None
        text = pc.localDescription.sdp
        if s.port_range is not None and s.port_range.exhausted > exhausted and "a=candidate:" not in text:
            raise OfferError(
                f"the server has no free UDP port left in its range {s.port_range}; "
                "the operator must widen rtc_port_min..rtc_port_max"
            )
        if s.announce_ip and s.bind_addresses and s.announce_ip not in s.bind_addresses:
            text = network.announce(text, s.announce_ip)
        for kind, section in info.publish.items():
            t = by_mid[section.mid]
            if kind == "video" and section.rids:
                text = add_simulcast_answer(text, section.mid, section.rids)
            if kind == "video":
                codec = next(c for c in t._codecs if c.mimeType.lower() == CODEC_FOR_KIND[kind])
                text = add_fmtp(text, section.mid, codec.payloadType, f"x-google-start-bitrate={s.start_bitrate_kbps}")
            elif kind == "audio" and s.opus_dtx:
                # usedtx=1 in our answer makes the browser's Opus encoder stop sending during
                # silence (one packet per 400 ms instead of 50 per second): in a meeting of
                # 164 sites where 3 speak, that is most of the audio the server would receive
                codec = next((c for c in t._codecs if c.mimeType.lower() == CODEC_FOR_KIND[kind]), None)
                if codec is not None:
                    text = add_fmtp(text, section.mid, codec.payloadType, "usedtx=1")
        self._build(info, by_mid)
        dtls = transceivers[0].receiver.transport
        # packets that slip through aiortc's own path before our fast path is installed
        dtls._handle_rtp_data = self._slow_rtp
        dtls._handle_rtcp_data = self._slow_rtcp
        dtls.on("statechange", lambda: self._dtls_state(dtls))
        pc.on("connectionstatechange", self._pc_state)
        self.negotiated = True
        return text

    def _configure(self, transceiver, section: Section) -> None:
        kind = section.kind
        wanted = CODEC_FOR_KIND[kind]
        codecs = [c for c in transceiver._codecs if c.mimeType.lower() == wanted][:1]
        if codecs:
            main = codecs[0]
            codecs += [
                c for c in transceiver._codecs if c.mimeType.lower().endswith("/rtx") and c.parameters.get("apt") == main.payloadType
            ][:1]
        transceiver._codecs = codecs
        allowed = PUBLISH_EXTENSIONS[kind] if section.publishes else list(SLOT_EXTENSIONS[kind])
        use_twcc = section.receives and "transport-cc" in section.feedback and URI_TRANSPORT_CC in section.extensions
        if section.receives:
            if use_twcc:
                # transport-cc feedback replaces REMB: stamping abs-send-time too only costs bytes
                allowed = [u for u in allowed if u != URI_ABS_SEND_TIME]
                if codecs and not any(f.type == "transport-cc" for f in codecs[0].rtcpFeedback):
                    codecs[0].rtcpFeedback.append(RTCRtcpFeedback(type="transport-cc"))
            else:
                allowed = [u for u in allowed if u != URI_TRANSPORT_CC]
        transceiver._headerExtensions = [
            RTCRtpHeaderExtensionParameters(id=ext_id, uri=uri) for uri, ext_id in section.extensions.items() if uri in allowed
        ]
        if section.receives:
            transceiver.direction = "sendonly"
            transceiver.sender._stream_id = f"hoinghi-{kind}-{section.mid}"
            if kind == "video" and codecs:
                fb = codecs[0].rtcpFeedback
                if not any(f.type == "ccm" for f in fb):
                    fb.append(RTCRtcpFeedback(type="ccm", parameter="fir"))
        elif section.publishes:
            transceiver.direction = "recvonly"
        transceiver.sender.send = _no_op
        transceiver.receiver.receive = _no_op
        # a video receiver's REMB estimator (aiortc's, unused: RTP never reaches the receiver)
        # holds 1,001 small objects; at 80 sites a worker kept 246,000 of them, and every full
        # garbage-collector pass walked them all (~230 ms with the forwarding path stopped)
        transceiver.receiver._RTCRtpReceiver__remote_bitrate_estimator = None

    def _build(self, info: OfferInfo, by_mid: dict) -> None:
        uri_ids: dict[str, int] = {}
        for kind, section in info.publish.items():
            t = by_mid[section.mid]
            if not t._codecs:
                continue
            main = t._codecs[0]
            rtx = t._codecs[1] if len(t._codecs) > 1 else None
            feedback = {f.type + (" " + f.parameter if f.parameter else "") for f in main.rtcpFeedback}
            producer = Producer(
                self, kind, section.mid, main.mimeType.lower(), main.clockRate, main.payloadType,
                rtx.payloadType if rtx else None, feedback, section.rids,
            )
            for ext in t._headerExtensions:
                uri_ids[ext.uri] = ext.id
            if not section.rids and section.ssrcs:
                stream = producer.streams[0]
                stream.ssrc = section.ssrcs[0]
                self._media_streams[stream.ssrc] = stream
                rtx_ssrc = section.fid.get(stream.ssrc)
                if rtx_ssrc:
                    stream.rtx_ssrc = rtx_ssrc
                    self._rtx_streams[rtx_ssrc] = stream
            self.producers[kind] = producer
            self._producers_by_mid[section.mid] = producer
        self.ext_kinds = ext_table(uri_ids)
        for kind in ("audio", "video"):
            for index, section in enumerate(info.slots[kind]):
                t = by_mid[section.mid]
                if not t._codecs:
                    continue
                main = t._codecs[0]
                rtx = t._codecs[1] if len(t._codecs) > 1 else None
                exts = {x.uri: x.id for x in t._headerExtensions}
                tcc_id = exts.get(URI_TRANSPORT_CC, 0)
                if tcc_id:
                    self.twcc = True
                consumer = Consumer(
                    self, kind, index, section.mid, t.sender._ssrc, main.payloadType, main.clockRate,
                    t.sender._rtx_ssrc if rtx else None, rtx.payloadType if rtx else None,
                    abs_send_time_id=exts.get(URI_ABS_SEND_TIME, 0) if kind == "video" else 0,
                    audio_level_id=exts.get(URI_AUDIO_LEVEL, 0) if kind == "audio" else 0,
                    transport_cc_id=tcc_id,
                    nack=any(f.type == "nack" and not f.parameter for f in main.rtcpFeedback),
                )
                self.consumers[kind].append(consumer)
                self._consumer_by_ssrc[consumer.ssrc] = consumer
                if consumer.rtx_ssrc is not None:
                    self._consumer_by_ssrc[consumer.rtx_ssrc] = consumer

    # ---------------------------------------------------------------- connection state

    def _dtls_state(self, dtls) -> None:
        if dtls.state == "connected" and self._tx is None:
            self._install_fast_path(dtls)
        elif dtls.state in ("closed", "failed"):
            self._sendto = None
            if NATIVE:
                self._direct_unbind()

    def _install_fast_path(self, dtls) -> None:
        self._rx = SrtpContext(dtls._rx_srtp)
        self._tx = SrtpContext(dtls._tx_srtp)
        # one publisher's socket feeds every subscriber: a loop stall must not drop its
        # datagrams (the kernel caps the buffer at net.core.rmem_max; see README)
        pair = hook_srtp_datagrams(dtls, self._on_datagram, rcvbuf=4 << 20)
        if pair is None:
            logger.warning("transport %s: DTLS up but no nominated ICE pair", self.participant_id)
            return
        protocol = pair.protocol
        self._kernel_arrival = KernelArrival(protocol.transport.get_extra_info("socket"))
        self._sendto = protocol.transport.sendto
        self._addr = pair.remote_addr
        if NATIVE:
            self._bind_direct(protocol.transport.get_extra_info("socket"))
        self.connected.set()
        if self._rtcp_task is None:
            self._rtcp_task = asyncio.ensure_future(self._rtcp_loop())
        self.router.transport_connected(self)

    def _bind_direct(self, sock) -> None:
        """Let the native path send on (a dup of) the nominated pair's socket itself."""
        if sock is None or self._tx is None or self._addr is None:
            return
        ctx, fn = srtp_addresses(self._tx._session)
        try:
            self._direct_bind(sock.fileno(), self._addr[0], self._addr[1], ctx, fn, self._tx,
                              self.twcc_history, HISTORY_SIZE)
        except (OSError, ValueError) as exc:  # e.g. a name, not an address: Python sends
            logger.warning("transport %s: native send path not used: %s", self.participant_id, exc)

    def _pc_state(self) -> None:
        state = self.pc.connectionState
        if self.on_state is not None:
            self.on_state(state)

    # ---------------------------------------------------------------- receive path

    async def _slow_rtp(self, data: bytes, arrival_time_ms: int = 0) -> None:
        try:
            self._on_rtp(data)
        except Exception:
            self.dropped_in += 1
            logger.exception("transport %s: packet handling failed", self.participant_id)

    async def _slow_rtcp(self, data: bytes) -> None:
        try:
            self._on_rtcp(data)
        except Exception:
            self.dropped_in += 1
            logger.exception("transport %s: packet handling failed", self.participant_id)

    def _on_datagram(self, data: bytes) -> None:
        rx = self._rx
        if rx is None:
            return
        try:
            b1 = data[1] if len(data) > 1 else 0
            if 192 <= b1 <= 208:
                plain = rx.unprotect_rtcp(data)
                if plain is not None:
                    self._on_rtcp(plain)
                else:
                    self.dropped_in += 1
            else:
                arrival = self._kernel_arrival()  # first: the stamp is the last datagram read's
                plain = rx.unprotect(data)
                if plain is not None:
                    self._on_rtp(plain, arrival * 1e-9)
                else:
                    self.dropped_in += 1
        except Exception:
            # one bad packet must never reach the event loop (and every other site with it)
            self.dropped_in += 1
            logger.exception("transport %s: packet handling failed", self.participant_id)

    def _on_rtp(self, data: bytes, arrival: float = 0.0) -> None:
        """`arrival`: when the kernel received it (monotonic s; 0: unknown, now)."""
        try:
            info = parse_rtp(data, self.ext_kinds)
        except ValueError:
            self.dropped_in += 1
            return
        self.packets_in += 1
        self.bytes_in += len(data)
        now = time.monotonic()
        info.arrival = arrival or now
        stream = self._media_streams.get(info.ssrc)
        if stream is not None:
            stream.on_rtp(info, now)
            return
        stream = self._rtx_streams.get(info.ssrc)
        if stream is not None:
            stream.on_rtx(info, now)
            return
        stream = self._learn_ssrc(info)
        if stream is None:
            self.dropped_in += 1
        elif info.ssrc == stream.rtx_ssrc:
            stream.on_rtx(info, now)
        else:
            stream.on_rtp(info, now)

    def _learn_ssrc(self, info: RtpInfo) -> Optional[RecvStream]:
        """Bind an unknown SSRC to a stream by mid/rid/repaired-rid, else by payload type.

        Chrome sends these extensions only on the first packets of an SSRC, so the binding is
        made on first sight and every later packet is routed by SSRC alone.
        """
        producer = self._producers_by_mid.get(info.mid) if info.mid else None
        if producer is None:
            for p in self.producers.values():
                if info.pt in (p.payload_type, p.rtx_payload_type):
                    producer = p
                    break
        if producer is None:
            return None
        is_rtx = info.pt == producer.rtx_payload_type and producer.rtx_payload_type is not None
        rid = info.rrid if is_rtx else info.rid
        if rid is not None:
            stream = producer.stream_for_rid(rid)
        elif not producer.simulcast:
            stream = producer.streams[0]
        else:
            return None
        if stream is None:
            return None
        if is_rtx:
            if stream.rtx_ssrc is not None:
                self._rtx_streams.pop(stream.rtx_ssrc, None)
            stream.rtx_ssrc = info.ssrc
            self._rtx_streams[info.ssrc] = stream
        else:
            if stream.ssrc is not None:
                self._media_streams.pop(stream.ssrc, None)
            stream.ssrc = info.ssrc
            self._media_streams[info.ssrc] = stream
            self.router.stream_started(stream)
        return stream

    def _on_rtcp(self, data: bytes) -> None:
        self.rtcp_in += 1
        now = time.monotonic()
        try:
            for item in rtcp.parse_compound(data):
                self._handle_rtcp(item, now)
        except ValueError:
            self.dropped_in += 1

    def _handle_rtcp(self, item: rtcp.RtcpItem, now: float) -> None:
        consumers = self._consumer_by_ssrc
        if isinstance(item, rtcp.Nack):
            c = consumers.get(item.media_ssrc)
            if c is not None:
                c.on_nack(item.lost)
        elif isinstance(item, rtcp.Pli):
            c = consumers.get(item.media_ssrc)
            if c is not None:
                c.request_keyframe()
        elif isinstance(item, rtcp.Fir):
            for ssrc, _seqnr in item.entries:
                c = consumers.get(ssrc)
                if c is not None:
                    c.request_keyframe()
        elif isinstance(item, (rtcp.SenderReport, rtcp.ReceiverReport)):
            if isinstance(item, rtcp.SenderReport):
                stream = self._media_streams.get(item.ssrc)
                if stream is not None:
                    stream.on_sr(item, now)
            for block in item.reports:
                c = consumers.get(block.ssrc)
                if c is not None and c.ssrc == block.ssrc:
                    c.on_report(block, now)
                    if c.is_video:
                        self.estimator.on_receiver_loss(block.fraction_lost / 256.0, now)
        elif isinstance(item, rtcp.Remb):
            self._on_remb(item, now)
            self._allocate_soon(now)
        elif isinstance(item, rtcp.TransportCcFeedback):
            self._on_twcc(item.payload, now)

    def _on_remb(self, item: rtcp.Remb, now: float) -> None:
        """Chrome sends one REMB for all SSRCs, aiortc one per video receiver. Each REMB is
        compared with what the SFU sent on the SSRCs it covers since the previous one: a
        receive-side estimate near that rate means "not congested" (it can only follow the
        incoming rate up), well below it means over-use. The link estimate adds up the
        parts, plus what no REMB covers (audio, for aiortc)."""
        key = tuple(sorted(item.ssrcs))
        octets = sum(c.octets + c.packets * 40 for s in key if (c := self._consumer_by_ssrc.get(s)) is not None and c.ssrc == s)
        prev = self._remb_parts.get(key)
        send = 0.0
        if prev is not None and now - prev[2] > 0.05:
            send = (octets - prev[3]) * 8 / (now - prev[2])
        elif prev is not None:
            send = prev[4]
        congested = send > 0 and item.bitrate < 0.9 * send
        value = float(item.bitrate) if congested or send <= 0 else max(float(item.bitrate), send * 1.08)
        self._remb_parts[key] = (value, congested, now, octets, send)
        self._remb_parts = {k: v for k, v in self._remb_parts.items() if now - v[2] < 5.0}
        self.remb = int(sum(v[0] for v in self._remb_parts.values()))
        covered = sum(v[4] for v in self._remb_parts.values())
        total = self.remb + max(0.0, self.send_rate(now) - covered)
        self.estimator.on_remb(total, now, any(v[1] for v in self._remb_parts.values()))
        self._allocate_soon(now)

    def _on_twcc(self, payload: bytes, now: float) -> None:
        try:
            base, arrivals = parse_arrivals(payload)
        except ValueError:
            self.dropped_in += 1
            return
        self.twcc_feedbacks += 1
        history = self.twcc_history
        times, sizes, seqs = history.times, history.sizes, history.seqs
        mask = len(seqs) - 1
        # (send time, size, arrival) of what we still remember sending, in seq order
        packets = [
            (times[i], sizes[i], arrival)
            for seq, arrival in enumerate(arrivals, base)
            if seqs[i := seq & mask] == (seq & 0xFFFF)
        ]
        if packets:
            self.estimator.on_feedback(packets, now)
            if self.allocator.probe is not None:
                scored = [((base + k) & 0xFFFF, a) for k, a in enumerate(arrivals)]
                self.allocator.on_feedback(
                    [(q, sent[0], sent[1], a) for q, a in scored if (sent := history.get(q)) is not None], now
                )
            self._allocate_soon(now)

    def _allocate_soon(self, now: float) -> None:
        """Re-allocate after feedback: at once when the estimate fell below what is being
        sent (a downgrade must not wait), otherwise at most twice a second."""
        since = now - self.allocator.last_run
        if since >= 0.5 or (since >= 0.05 and self.estimator.estimate < self.allocator.allocated_bps + self.allocator.audio_bps):
            self.allocator.run(now)

    # ---------------------------------------------------------------- send path

    # ---------------------------------------------------------------- pacing

    # Pace at about the estimate (on-the-wire bytes) while the link has shown its limit
    # lately: a keyframe burst then waits here, not in the bottleneck's queue, where it would
    # overflow a shallow one (tbf drops beyond ~100 ms of data) and read as over-use to the
    # delay detector (at 1.25x every spatial upgrade near the limit tripped GCC and was undone
    # within 2 s). Elsewhere the estimate is only a lower bound (no limit met, no probe
    # slowed): pace at 2.5x as libwebrtc does, or every frame queues behind the last
    # (pacer p99 100 ms at 1.05x, 1 ms at 1.25x and 2.5x, 16 sites on loopback).
    # Never faster than 0.95 x a capacity a probe measured (allocator.py). A packet leaves
    # when the bucket is out of debt, whatever its size, and its bytes go into debt (libwebrtc's
    # media debt); the bucket saves at most 5 ms of the rate while idle (with 20 ms, a frame
    # left at once after a pause and a 5 Mbit/s link queued it for 10-40 ms, a sawtooth GCC
    # read as over-use every few seconds), so a burst is that plus one packet.
    PACE_FACTOR = 1.05
    PACE_FACTOR_FREE = 2.5
    PACE_BURST_S = 0.005
    # ... and at least 300 bytes (~8 ms at 300 kbit/s), for timer ticks that fire late. It was
    # a full-size packet (1.5 kB) a packet had to wait for: at 300 kbit/s the savings then let
    # a frame's two packets out 2-20 ms apart into a link that takes 30 ms for one, a queue of
    # up to 40 ms that GCC read as over-use 4-20 times a minute with 0.5-0.7 of the link used.
    # (3 kB before that: 80 ms of such a link at once.)
    PACE_BURST_MIN = 300.0
    # A drain tick comes when the debt is paid; one that fires late finds the queue waited all
    # along, and catches up up to this much of the rate at once. Capped at the idle savings
    # (5 ms), the pacer lost every late tick's lateness: at 800 kbit/s on a busy 2-core host it
    # delivered ~660 kbit/s of its 753 with 60-77 packets standing in its queue, and that
    # backlog paused every thumbnail.
    PACE_LATE_S = 0.04
    PACE_MAX_QUEUE_S = 1.0

    def set_pacing(self, estimate_bps: float, factor: float = PACE_FACTOR) -> None:
        """Pace this site's downlink at `factor` x its estimate (0: no pacing, for sites
        that send no congestion feedback). Idle cost is one comparison per packet."""
        self._pace_rate = estimate_bps * factor / 8.0  # bytes per second
        self._pace_burst = max(self.PACE_BURST_MIN, self._pace_rate * self.PACE_BURST_S)
        self._pace_late = max(self._pace_burst, self._pace_rate * self.PACE_LATE_S)

    def _pace_schedule(self, delay: float) -> None:
        """Drain the queue when the debt is paid, but not sooner than half of PACE_BURST_S:
        at a few Mbit/s a packet's bytes are paid in under a millisecond, and a timer per
        packet cost more than the sending (a timer a tick, a burst a tick, is what
        libwebrtc's pacer does too). A tick that fires late finds the queue waited all
        along and catches up to PACE_LATE_S of the rate (tokens beyond that are lost: kept
        to the idle savings, a busy loop paced ~12 % below the rate)."""
        # the loop is looked up once: asyncio.get_running_loop() makes a getpid() syscall
        # on every call, and the pacer schedules itself hundreds of times a second
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        loop.call_later(max(delay, self.PACE_BURST_S / 2), self._pace_drain)

    def _send_rtp_py(self, packet: bytearray, tcc_off: int = 0, urgent: bool = False) -> None:
        rate = self._pace_rate
        if not rate:
            self._send_now(packet, tcc_off)
            return
        queue = self._pace_queue
        if urgent:
            # audio is never queued behind video (libwebrtc does not pace it either): it goes
            # at once and its bytes are owed, so the video behind it waits a little longer.
            # Queued, a 300 kbit/s site's voice waited behind each keyframe, 0.2-0.5 s.
            now = time.monotonic()
            cap = self._pace_late if queue else self._pace_burst
            self._pace_tokens = min(cap, self._pace_tokens + (now - self._pace_time) * rate) - (len(packet) + WIRE_OVERHEAD)
            self._pace_time = now
            self._send_now(packet, tcc_off, now)
            return
        if queue:
            if self._pace_queued_bytes > rate * self.PACE_MAX_QUEUE_S:
                self.pace_dropped += 1
                return
            queue.append((packet, tcc_off, time.monotonic()))
            self._pace_queued_bytes += len(packet)
            return
        now = time.monotonic()
        tokens = self._pace_tokens + (now - self._pace_time) * rate
        if tokens > self._pace_burst:
            tokens = self._pace_burst
        self._pace_time = now
        n = len(packet)
        if tokens >= 0.0:  # out of debt: it goes, whatever its size, and its bytes are owed
            self._pace_tokens = tokens - (n + WIRE_OVERHEAD)
            self._send_now(packet, tcc_off, now)
            return
        self._pace_tokens = tokens
        queue.append((packet, tcc_off, now))
        self._pace_queued_bytes += n
        self._pace_schedule(-tokens / rate)

    def pace_queued_bytes(self) -> int:
        return self._pace_queued_bytes

    def pace_backlog_s(self) -> float:
        """How long the pacer needs, at its rate now, to send what it holds (0: not pacing)."""
        rate = self._pace_rate
        return self._pace_queued_bytes / rate if rate else 0.0

    def purge_queued(self, ssrcs: tuple[bytes, ...]) -> list[bytearray]:
        """Take back the packets of these SSRCs (4 bytes each, as on the wire) still waiting
        in the pacer queue. A slot dropped for a lower layer does not need the old layer's
        backlog: behind a link that just shrank it would hold the new layer's keyframe back
        for up to PACE_MAX_QUEUE_S (a visible freeze)."""
        queue = self._pace_queue
        if not queue:
            return []
        kept: deque = deque()
        taken: list[bytearray] = []
        for item in queue:
            if item[0][8:12] in ssrcs:
                taken.append(item[0])
                self._pace_queued_bytes -= len(item[0])
            else:
                kept.append(item)
        if taken:
            self._pace_queue = kept
        return taken

    def _pace_drain_py(self) -> None:
        queue = self._pace_queue
        rate = self._pace_rate
        if not queue:
            return
        if not rate:
            while queue:
                packet, tcc_off, _ = queue.popleft()
                self._send_now(packet, tcc_off)
            self._pace_queued_bytes = 0
            return
        now = time.monotonic()
        tokens = min(self._pace_late, self._pace_tokens + (now - self._pace_time) * rate)
        self._pace_time = now
        while queue and tokens >= 0.0:
            packet, tcc_off, queued = queue.popleft()
            tokens -= len(packet) + WIRE_OVERHEAD
            self._pace_queued_bytes -= len(packet)
            self._send_now(packet, tcc_off, now)
            wait = now - queued
            self.pace_wait_s += wait
            self.pace_waited[bisect_left(LATENCY_BOUNDS_S, wait)] += 1
        self._pace_tokens = tokens
        if queue:
            self._pace_schedule(-tokens / rate)

    def _send_now_py(self, packet: bytearray, tcc_off: int, now: float = 0.0) -> None:
        sendto = self._sendto
        if sendto is None:
            return
        if tcc_off:
            seq = self.twcc_history.next(now or time.monotonic(), len(packet) + WIRE_OVERHEAD)
            packet[tcc_off] = seq >> 8
            packet[tcc_off + 1] = seq & 0xFF
        try:
            data = self._tx.protect(packet)
        except SrtpError:
            self.send_errors += 1
            return
        sendto(data, self._addr)
        self.packets_out += 1
        self.bytes_out += len(data)

    if not NATIVE:
        send_rtp = _send_rtp_py
        _send_now = _send_now_py
        _pace_drain = _pace_drain_py

    def send_rate(self, now: float) -> float:
        """Bits per second sent over roughly the last half second."""
        mark_time, mark_bytes = self._rate_mark
        if now - mark_time >= 0.5:
            self._send_bps = (self.bytes_out - mark_bytes) * 8 / (now - mark_time)
            self._rate_mark = (now, self.bytes_out)
        return self._send_bps

    def send_probe_packet(self, now: float, limit: float = 1500.0) -> tuple[Optional[int], int]:
        """Send one probing packet: an RTX copy of recent video no larger than `limit` wire
        bytes, else RTX padding. The limit keeps a cluster smooth at low rates: a 1200-byte
        copy is three of a 350 kbit/s probe's 10 ms ticks, and whichever third of the cluster
        the big ones fell in read too fast or too slow."""
        candidates = [c for c in self.consumers["video"] if c.rtx_ssrc is not None and c.tcc_off]
        if not candidates or self._sendto is None:
            return None, 0
        self._probe_rr = (self._probe_rr + 1) % len(candidates)
        c = candidates[self._probe_rr]
        pkt = None
        if c.sent_any and c.history is not None:
            # the largest of the last few packets: a probe of big packets measures the link,
            # one of small packets mostly its per-packet overhead (and costs more CPU)
            history = c.history
            mask = len(history) - 1
            best = None
            fits = limit - WIRE_OVERHEAD - 2  # (an RTX copy carries the original seq: 2 bytes)
            for back in range(8):
                p = history[(c.last_seq - back) & mask]
                if p is not None and len(p) <= fits and (best is None or len(p) > len(best)):
                    best = p
            if best is not None and len(best) > 300:
                pkt = c.rtx_copy(best)
        if pkt is None:
            pkt = c.padding_packet(int(min(255.0, max(1.0, limit - WIRE_OVERHEAD - len(c._template)))))
        if pkt is None:
            return None, 0
        seq = self.twcc_history.seq
        self._send_now(pkt, c.tcc_off)  # probes go at the probe's rate, not the pacer's
        return seq, len(pkt) + WIRE_OVERHEAD

    def send_rtcp(self, packet: bytes) -> None:
        sendto = self._sendto
        if sendto is None:
            return
        try:
            sendto(self._tx.protect_rtcp(packet), self._addr)
        except SrtpError:
            self.send_errors += 1

    async def _rtcp_loop(self) -> None:
        """Receiver reports (+REMB) for what this site publishes, sender reports for its slots."""
        try:
            while not self.closed:
                await asyncio.sleep(RTCP_INTERVAL * (0.5 + random.random()))
                now = time.monotonic()
                self.send_reports(now)
                self.send_rate(now)
                self.allocator.run(now)
                if logger.isEnabledFor(logging.DEBUG) and self.estimator.mode != "none":
                    e, a = self.estimator, self.allocator
                    logger.debug(
                        "downlink %s: est %.0f (delay %.0f loss-based %.0f) loss %.3f overuse %s send %.0f "
                        "layers %s probes %d/%d last %s pace %.0f cap %.0f pace-q %d dropped %d "
                        "budget %.0f allocated %.0f ideal %.0f audio %.0f upgrade hold %.1f s",
                        self.participant_id, e.estimate, e.delay_bps, e.loss_bps, e.loss, e.overusing,
                        self._send_bps, [(c.layer, c.temporal) if not c.paused else -1 for c in self.consumers["video"] if c.producer],
                        a.probe_successes, a.probes, a.last_probe_result, self._pace_rate * 8, e.capacity_bps,
                        len(self._pace_queue), self.pace_dropped,
                        a.budget, a.allocated_bps, a.ideal_bps, a.audio_bps, max(0.0, a.hold_until - now),
                    )
        except asyncio.CancelledError:
            pass

    def send_reports(self, now: float) -> None:
        blocks = []
        media_ssrcs = []
        has_video = False
        for producer in self.producers.values():
            for stream in producer.streams:
                stream.update_rate(now)
                block = stream.report_block(now)
                if block is not None:
                    blocks.append(block)
                    media_ssrcs.append(stream.ssrc)
                    has_video = has_video or producer.kind == "video"
                if stream.sinks and producer.kind == "video":
                    for sink in stream.sinks:
                        if sink.target is stream and now - sink.target_since > 1.0:
                            stream.request_keyframe(now)
                            break
        if blocks:
            packet = rtcp.pack_rr(self.rtcp_ssrc, blocks)
            if has_video and self.settings.publisher_max_bitrate:
                packet += rtcp.pack_remb(self.rtcp_ssrc, self.settings.publisher_max_bitrate, media_ssrcs)
            self.send_rtcp(packet)
        ntp = rtcp.ntp_now()
        for consumers in self.consumers.values():
            for c in consumers:
                sr = c.sender_report(now, ntp)
                if sr is not None:
                    self.send_rtcp(sr + rtcp.pack_sdes_cname(c.ssrc, self.cname))

    # ---------------------------------------------------------------- introspection

    def stats(self) -> dict:
        """Link figures for the hub's roster and for metrics (cheap: counters only)."""
        now = time.monotonic()
        published = {}
        for kind, p in self.producers.items():
            layers = []
            for s in p.streams:
                expected = s.cycles + s.max_seq - s.base_seq + 1 if s.started else 0
                layers.append(
                    {
                        "rid": s.rid,
                        "active": s.ssrc is not None and now - s.last_packet < 1.0,
                        "bitrate": round(s.bitrate),
                        "loss": round(max(0, expected - s.received) / expected, 4) if expected > 0 else 0.0,
                        "jitter_ms": round(s.jitter * 1000 / s.clock_rate, 1),
                    }
                )
            published[kind] = {"muted": p.muted, "layers": layers}
        received = {}
        for kind, consumers in self.consumers.items():
            received[kind] = [
                {
                    "index": c.index,
                    "participant_id": c.producer.participant_id if c.producer else None,
                    "layer": c.source.layer if c.source is not None else None,
                    "target_layer": c.target.layer if c.target is not None else None,
                    "layers": len(c.producer.streams) if c.producer else 0,
                    "paused": c.paused,
                    "reason": c.reason,
                    "loss": round(c.fraction_lost / 256, 4),
                }
                for c in consumers
            ]
        return {
            "rtt_ms": round(self.rtt * 1000, 1),
            "estimated_bps": round(self.estimator.estimate),
            "estimator": self.estimator.mode,
            "send_bps": round(self._send_bps),
            "desired_bps": round(self.allocator.desired_bps),
            "layer_switches": self.allocator.switches,
            "pacer_dropped": self.pace_dropped,
            "packets_in": self.packets_in,
            "packets_out": self.packets_out,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "published": published,
            "received": received,
        }

    # ---------------------------------------------------------------- teardown

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._sendto = None
        if NATIVE:
            self._direct_unbind()
        if self._rtcp_task is not None:
            self._rtcp_task.cancel()
        for producer in self.producers.values():
            producer.close()
        for consumers in self.consumers.values():
            for c in consumers:
                c.close()
        try:
            await self.pc.close()
        except Exception:  # closing a half-negotiated connection must never take others down
            logger.exception("transport %s: error while closing", self.participant_id)
