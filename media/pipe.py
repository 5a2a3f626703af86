"""Pipes between worker processes: a published stream crosses to another worker once.

With several media workers serving one meeting, a site's transport lives in one worker
(its "origin"); subscribers on other workers see its tracks as *remote producers* whose
streams are fed over a pipe. The pipe is plain UDP on 127.0.0.1 between the workers of one
host (the packets were already decrypted by the origin; loopback never leaves the host), in
the manner of mediasoup's PipeTransport.

Each datagram starts with a type byte and a 4-byte stream id (sid, unique per server:
worker index in the top byte):

    RTP       1 sid | arrival f64 | the publisher's plain RTP packet, as received (after RTX
                                      unwrap); arrival: when the origin's kernel got it
    SR        2 sid | ntp u64 | rtp u32 | arrival f64   the publisher's sender report timing
    WANT      3 sid | 0/1                         consumer side -> origin: (stop) forwarding
    KEYFRAME  4 sid                               consumer side -> origin: a keyframe please
    RATES     5 sid | bps f32 | peak f32 | age u16 ms  (repeated)  origin -> consumer side

Forwarding is on demand: the origin sends a stream to a worker only while some sink there
(a subscriber's slot, the recorder) takes it. That is what "each published stream crosses
to another worker at most once" means here: one copy per worker that needs it, however
many subscribers that worker serves. Layers nobody anywhere receives are therefore still
seen as idle by the origin's router, which pauses them at the publisher.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from typing import TYPE_CHECKING, Any, Callable, Optional

from .producer import KEYFRAME_MIN_INTERVAL, KEYFRAME_RETRY, Producer, RecvStream, mean_rate
from .rtp import parse_rtp

if TYPE_CHECKING:
    from .router import Router

logger = logging.getLogger(__name__)

T_RTP, T_SR, T_WANT, T_KEYFRAME, T_RATES = 1, 2, 3, 4, 5
_head = struct.Struct("!BI")
_rtp_head = struct.Struct("!BId")  # + the origin's kernel arrival time (CLOCK_MONOTONIC is host-wide)
_sr = struct.Struct("!BIQId")  # + the origin's arrival time (CLOCK_MONOTONIC is host-wide)
_want = struct.Struct("!BIB")
_rate = struct.Struct("!Iffh")
RATES_INTERVAL = 0.5
UNWANT_AFTER = 2.0  # a stream no local sink took for this long is released at the origin


class PipeOrigin:
    """Stands in for a remote site's WebRtcTransport in this worker's Router: the
    `transport` of its remote producers (RecvStream reads ext_kinds, rtt, rtcp_ssrc)."""

    def __init__(self, participant_id: str, worker: int, ext_kinds: list[int]) -> None:
        self.participant_id = participant_id
        self.worker = worker
        self.ext_kinds = ext_kinds
        self.producers: dict[str, Producer] = {}
        self.rtt = 0.05
        self.rtcp_ssrc = 0
        self.closed = False

    def send_rtcp(self, packet: bytes) -> None:
        """Never used: remote streams ask their origin through the pipe instead."""

    def close(self) -> None:
        self.closed = True
        for p in self.producers.values():
            p.close()


class PipeRecvStream(RecvStream):
    """A layer of a remote producer. Loss on the loopback pipe is not NACKed (the origin
    already repaired the publisher's uplink); keyframe requests go back to the origin."""

    pipe: "PipeEndpoint"
    sid: int
    wanted_at: float = 0.0  # last time a local sink took it (0: not wanted)
    want_sent: bool = False

    def request_keyframe(self, now: float) -> bool:
        self.pipe.want(self, now)
        if self.keyframe_requested and now - self.keyframe_requested < KEYFRAME_MIN_INTERVAL:
            return False
        self.keyframe_requested = now
        self.pipe.send_keyframe_request(self)
        self.producer.keyframe_requests += 1
        return True


class PipeSink:
    """At the origin: forwards one stream to one other worker. Sits in RecvStream.sinks
    like a Consumer, so the packet path needs no special case."""

    __slots__ = ("endpoint", "addr", "stream", "worker", "sid", "sr_sent")
    target = None  # RecvStream.sinks entries are read for a pending switch target

    def __init__(self, endpoint: "PipeEndpoint", stream: RecvStream, sid: int, worker: int, addr: tuple) -> None:
        self.endpoint = endpoint
        self.stream = stream
        self.worker = worker
        self.addr = addr
        self.sid = sid
        self.sr_sent = 0.0

    def write(self, info: Any, stream: RecvStream, now: float) -> None:
        self.endpoint.sendto(_rtp_head.pack(T_RTP, self.sid, info.arrival) + info.data, self.addr)

    def source_closed(self, stream: RecvStream) -> None:
        self.endpoint.sinks.pop((id(stream), self.worker), None)


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, endpoint: "PipeEndpoint") -> None:
        self.endpoint = endpoint

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        try:
            self.endpoint.on_datagram(data, addr)
        except Exception:  # one bad datagram must not stop the pipe
            logger.exception("pipe: datagram from %s dropped", addr)

    def error_received(self, exc: Exception) -> None:
        logger.debug("pipe: %s", exc)


class PipeEndpoint:
    """This worker's end of all pipes: one UDP socket, the streams it exports and imports."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.port = 0
        self.peers: dict[int, tuple] = {}  # worker index -> (host, port)
        self._by_addr: dict[tuple, int] = {}
        self._transport: Optional[asyncio.DatagramTransport] = None
        self._counter = 0
        self.local: dict[int, RecvStream] = {}  # sid -> origin stream
        self._sid_of: dict[int, int] = {}  # id(origin stream) -> sid
        self.remote: dict[int, PipeRecvStream] = {}  # sid -> imported stream
        self.sinks: dict[tuple[int, int], PipeSink] = {}  # (id(origin stream), worker) -> sink
        self.routers: Callable[[], list["Router"]] = lambda: []
        self._timer: Optional[asyncio.Task] = None
        self.packets_out = 0
        self.packets_in = 0
        self.sendto: Callable[[bytes, tuple], None] = self._sendto_unbound

    async def start(self, host: str = "127.0.0.1") -> int:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(self), local_addr=(host, 0))
        self._transport = transport
        sock = transport.get_extra_info("socket")
        try:
            import socket

            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        except OSError:
            pass
        self.port = transport.get_extra_info("sockname")[1]
        self.sendto = self._count_sendto
        self._timer = asyncio.ensure_future(self._loop())
        return self.port

    def _sendto_unbound(self, data: bytes, addr: tuple) -> None:
        pass

    def _count_sendto(self, data: bytes, addr: tuple) -> None:
        self.packets_out += 1
        assert self._transport is not None
        self._transport.sendto(data, addr)

    def set_peers(self, peers: dict[int, tuple]) -> None:
        self.peers = {int(k): tuple(v) for k, v in peers.items() if int(k) != self.index}
        self._by_addr = {addr: idx for idx, addr in self.peers.items()}
        # sinks toward a worker that was replaced are stale: it will ask again
        for key, sink in list(self.sinks.items()):
            if self.peers.get(sink.worker) != sink.addr:
                self._drop_sink(key)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._transport is not None:
            self._transport.close()

    # ---------------------------------------------------------------- origin side

    def export(self, stream: RecvStream) -> int:
        """A stream id other workers will know this local stream by."""
        sid = self._sid_of.get(id(stream))
        if sid is None:
            self._counter += 1
            sid = (self.index << 24) | (self._counter & 0xFFFFFF)
            self._sid_of[id(stream)] = sid
            self.local[sid] = stream
        return sid

    def unexport(self, stream: RecvStream) -> None:
        sid = self._sid_of.pop(id(stream), None)
        if sid is not None:
            self.local.pop(sid, None)
        for key in [k for k in self.sinks if k[0] == id(stream)]:
            self._drop_sink(key)

    def _drop_sink(self, key: tuple[int, int]) -> None:
        sink = self.sinks.pop(key, None)
        if sink is not None and sink in sink.stream.sinks:
            sink.stream.sinks.remove(sink)

    # ---------------------------------------------------------------- consumer side

    def import_stream(self, stream: PipeRecvStream, sid: int) -> None:
        stream.pipe = self
        stream.sid = sid
        stream.ssrc = sid  # a stand-in: remote streams are never reported on
        self.remote[sid] = stream

    def drop_import(self, sid: int) -> None:
        stream = self.remote.pop(sid, None)
        if stream is not None and stream.want_sent:
            self._send_want(stream, False)

    def _origin_addr(self, stream: PipeRecvStream) -> Optional[tuple]:
        return self.peers.get(stream.sid >> 24)

    def want(self, stream: PipeRecvStream, now: float) -> None:
        stream.wanted_at = now
        if not stream.want_sent:
            stream.want_sent = True
            self._send_want(stream, True)

    def _send_want(self, stream: PipeRecvStream, on: bool) -> None:
        addr = self._origin_addr(stream)
        if addr is not None:
            self.sendto(_want.pack(T_WANT, stream.sid, 1 if on else 0), addr)

    def send_keyframe_request(self, stream: PipeRecvStream) -> None:
        addr = self._origin_addr(stream)
        if addr is not None:
            self.sendto(_head.pack(T_KEYFRAME, stream.sid), addr)

    def refresh_wants(self, now: Optional[float] = None) -> None:
        """After the Router (re)assigned slots: ask for what local sinks take now; release
        what nobody here has taken for UNWANT_AFTER (a hovering viewer does not flap it)."""
        now = time.monotonic() if now is None else now
        for stream in self.remote.values():
            if stream.sinks:
                self.want(stream, now)
            elif stream.want_sent and now - stream.wanted_at > UNWANT_AFTER:
                stream.want_sent = False
                self._send_want(stream, False)

    # ---------------------------------------------------------------- receive

    def on_datagram(self, data: bytes, addr: tuple) -> None:
        kind = data[0]
        if kind == T_RTP:
            _, sid, arrival = _rtp_head.unpack_from(data)
            stream = self.remote.get(sid)
            if stream is None:
                return
            self.packets_in += 1
            try:
                info = parse_rtp(data[_rtp_head.size :], stream.producer.transport.ext_kinds)
            except ValueError:
                return
            now = time.monotonic()
            info.arrival = arrival if 0 < now - arrival < 10 else now
            stream.on_rtp(info, now)
            return
        worker = self._by_addr.get(addr)
        if worker is None:
            return  # not one of our workers
        if kind == T_WANT:
            _, sid, on = _want.unpack_from(data)
            stream = self.local.get(sid)
            if stream is None:
                return
            key = (id(stream), worker)
            if on and key not in self.sinks:
                sink = PipeSink(self, stream, sid, worker, addr)
                self.sinks[key] = sink
                stream.sinks.append(sink)
            elif not on:
                self._drop_sink(key)
        elif kind == T_KEYFRAME:
            stream = self.local.get(_head.unpack_from(data)[1])
            if stream is not None:
                stream.request_keyframe(time.monotonic())
        elif kind == T_SR:
            _, sid, ntp, rtp_ts, arrival = _sr.unpack_from(data)
            stream = self.remote.get(sid)
            if stream is not None:
                stream.sr_ntp, stream.sr_rtp, stream.sr_arrival = ntp, rtp_ts, arrival
        elif kind == T_RATES:
            now = time.monotonic()
            for off in range(1, len(data) - _rate.size + 1, _rate.size):
                sid, bps, peak, age_ms = _rate.unpack_from(data, off)
                stream = self.remote.get(sid)
                if stream is not None:
                    stream.bitrate = bps
                    stream.bitrate_mean = mean_rate(stream.bitrate_mean, bps)
                    stream.bitrate_peak = peak
                    if age_ms >= 0:
                        stream.last_packet = max(stream.last_packet, now - age_ms / 1000.0)
                        if age_ms < 250:
                            stream.bitrate_known = peak

    # ---------------------------------------------------------------- timers

    async def _loop(self) -> None:
        try:
            while True:
                await asyncio.sleep(RATES_INTERVAL)
                try:
                    self._tick(time.monotonic())
                except Exception:
                    logger.exception("pipe: timer")
        except asyncio.CancelledError:
            pass

    def _tick(self, now: float) -> None:
        # origin: every other worker learns the layer rates (the allocator there plans with
        # them before it takes a layer) and whether each layer is flowing
        if self.peers and self.local:
            parts = [bytes((T_RATES,))]
            for sid, s in self.local.items():
                age = int(min(30000, (now - s.last_packet) * 1000)) if s.last_packet else -1
                parts.append(_rate.pack(sid, s.bitrate, s.bitrate_peak, age))
            # keep each datagram under ~1200 bytes
            step = 80
            for i in range(1, len(parts), step):
                packet = parts[0] + b"".join(parts[i : i + step])
                for addr in self.peers.values():
                    self.sendto(packet, addr)
        # origin: the publisher's sender-report timing, so remote slots translate SRs too
        for sink in self.sinks.values():
            s = sink.stream
            if s.sr_arrival and s.sr_arrival != sink.sr_sent:
                sink.sr_sent = s.sr_arrival
                self.sendto(_sr.pack(T_SR, sink.sid, s.sr_ntp, s.sr_rtp, s.sr_arrival), sink.addr)
        # consumer side: a slot still waiting for its keyframe asks again
        for stream in self.remote.values():
            for sink in stream.sinks:
                if getattr(sink, "target", None) is stream and now - sink.target_since > KEYFRAME_RETRY:
                    stream.keyframe_requested = 0.0
                    stream.request_keyframe(now)
                    break
        self.refresh_wants(now)
