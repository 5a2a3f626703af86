"""What a site publishes: a Producer per track, a RecvStream per encoding (simulcast layer).

A RecvStream owns the receive side of one SSRC (and its RTX SSRC): loss and jitter
statistics for receiver reports, gap detection that NACKs the publisher at once and retries
on a timer, RTX unwrapping, sender-report timing, and the fan-out to its sinks. The fan-out
is a plain loop of synchronous calls: one parse per received packet, no coroutine per
subscriber.
"""

from __future__ import annotations

import asyncio
import logging
import time
from bisect import bisect_left
from typing import TYPE_CHECKING, Optional

from . import rtcp, vp8
from .fastpath import fanout
from .rtp import WIRE_OVERHEAD, RtpInfo, parse_rtp
from .timing import FORWARD_DELAY, LATENCY_BOUNDS_S

if TYPE_CHECKING:
    from .consumer import Consumer
    from .transport import WebRtcTransport

logger = logging.getLogger(__name__)

NACK_INTERVAL = 0.04  # retry period for missing packets, s
NACK_MAX_AGE = 1.0  # give up on a missing packet after this, s
NACK_MAX_TRIES = 8
MAX_GAP = 400  # a larger forward jump is a publisher restart, not loss
PROBATION = 3  # consecutive packets that confirm a far sequence jump (a restart)
KEYFRAME_MIN_INTERVAL = 0.5  # at most two keyframe requests a second per layer
KEYFRAME_RETRY = 1.0  # ask again if the keyframe has not come after this
TL_DEFAULT_SHARE = {2: (0.6, 1.0), 3: (0.4, 0.6, 1.0)}  # libwebrtc's temporal rate split


def mean_rate(mean: float, sample: float) -> float:
    """One more 0.5 s window into a rate smoothed over about 2 s."""
    return sample if not mean else mean + 0.25 * (sample - mean)


class RecvStream:
    """One incoming encoding: an SSRC, its RTX SSRC, and who forwards it."""

    def __init__(self, producer: "Producer", layer: int, rid: Optional[str] = None) -> None:
        self.producer = producer
        self.layer = layer
        self.rid = rid
        self.ssrc: Optional[int] = None
        self.rtx_ssrc: Optional[int] = None
        self.sinks: list["Consumer"] = []
        self.clock_rate = producer.clock_rate
        self.is_vp8 = producer.is_vp8
        # sequence state (RFC 3550 appendix A.1)
        self.started = False
        self.base_seq = 0
        self.max_seq = 0
        self.cycles = 0
        self.received = 0
        self.expected_prior = 0
        self.received_prior = 0
        self.duplicates = 0
        self.stray = 0  # packets far off the sequence, dropped unless a restart is confirmed
        self._far_seq = 0
        self._far_n = 0
        self.missing: dict[int, list[float]] = {}  # seq -> [first seen missing, last nack, tries]
        self._nack_timer: Optional[asyncio.TimerHandle] = None
        self.nacks_sent = 0
        self.recovered = 0
        self.lost_for_good = 0
        # jitter
        self._transit: Optional[float] = None
        self.jitter = 0.0
        # sender report
        self.sr_ntp = 0
        self.sr_rtp = 0
        self.sr_arrival = 0.0
        # bitrate
        self.octets = 0
        self._rate_octets = 0
        self._rate_time = time.monotonic()
        self.bitrate = 0.0
        self.bitrate_peak = 0.0
        #: the rate over the last ~2 s (0.5 s windows, smoothed): what a layer costs on
        #: average, its keyframes spread out; the peak is its worst half second
        self.bitrate_mean = 0.0
        # the peak when the layer last flowed: what resuming it will cost (a layer paused at
        # the publisher because nobody took it has no current rate; a nominal one was off by
        # 40 % for detailed content, and the allocator took a layer the link could not carry)
        self.bitrate_known = 0.0
        self.last_packet = 0.0
        # VP8 temporal layers (Chrome sends L1T3 per simulcast layer): octets per temporal id
        # since the last rate update, and each id's share of the stream (cumulative: share[t]
        # is what forwarding temporal ids 0..t costs, as a fraction of the whole layer)
        self.temporal_layers = 1
        self._tl_octets = [0, 0, 0, 0]
        self.tl_share = [1.0, 1.0, 1.0, 1.0]
        # keyframes
        self.last_keyframe = 0.0
        self.keyframe_requested = 0.0
        self.keyframes = 0
        self._fir_seq = 0

    # ---------------------------------------------------------------- packet path

    def on_rtp(self, info: RtpInfo, now: float, recovered: bool = False) -> None:
        seq = info.seq
        if not self.started:
            self.started = True
            self.base_seq = self.max_seq = seq
            self.received_prior = 0
            self.expected_prior = 0
        else:
            delta = (seq - self.max_seq) & 0xFFFF
            if delta == 0:
                self.duplicates += 1
                return
            if delta < 0x8000 and delta <= MAX_GAP:
                if delta > 1:
                    self._gap(self.max_seq, seq, now)
                if seq < self.max_seq:
                    self.cycles += 0x10000
                self.max_seq = seq
                self._far_n = 0
            elif delta >= 0x8000 and self.missing.pop(seq, None) is not None:
                self.recovered += 1
            elif delta >= 0x8000 and (self.max_seq - seq) & 0xFFFF <= MAX_GAP:
                self.duplicates += 1  # late duplicate, or given up on
                return
            else:
                # Far from the sequence, either way: a publisher restart, or one stray
                # packet. Only PROBATION consecutive ones are believed (as libwebrtc does),
                # so a single bad sequence number cannot make the real stream look old.
                if self._far_n and seq == (self._far_seq + 1) & 0xFFFF:
                    self._far_n += 1
                else:
                    self._far_n = 1
                self._far_seq = seq
                if self._far_n < PROBATION:
                    self.stray += 1
                    return
                # publisher restarted its sequence: resynchronise, no NACK storm
                self._far_n = 0
                self.missing.clear()
                self.base_seq = self.max_seq = seq
                self.cycles = 0
                self.received = 0
                self.expected_prior = self.received_prior = 0
                self.request_keyframe(now)
        self.received += 1
        if not recovered:
            # RFC 3550 A.8 interarrival jitter, in RTP units
            transit = now * self.clock_rate - info.ts
            if self._transit is not None:
                d = abs(transit - self._transit)
                if d < self.clock_rate * 10:
                    self.jitter += (d - self.jitter) / 16.0
            self._transit = transit
        n = len(info.data)
        self.octets += n
        self._rate_octets += n + WIRE_OVERHEAD
        self.last_packet = now
        if self.is_vp8:
            vp8.parse_descriptor(info)
            tid = info.vp8_tid
            self._tl_octets[tid] += n
            if tid >= self.temporal_layers:
                self._new_temporal_layer(tid)
            if info.keyframe:
                self.last_keyframe = now
                self.keyframes += 1
                self.keyframe_requested = 0.0
        if info.audio_level >= 0:
            p = self.producer
            p.level_sum += info.audio_level & 0x7F
            p.level_n += 1
        if self.producer.muted:
            return
        info.abs24 = int(now * 262144.0) & 0xFFFFFF
        info.payload = memoryview(info.data)[info.payload_offset :]
        sinks = self.sinks
        if sinks:
            fanout(info, sinks, self, now)
            if info.arrival:
                FORWARD_DELAY[bisect_left(LATENCY_BOUNDS_S, time.monotonic() - info.arrival)] += 1

    def on_rtx(self, info: RtpInfo, now: float) -> None:
        """Unwrap an RFC 4588 retransmission and feed it as the original packet."""
        po = info.payload_offset
        if len(info.data) - info.padding - po < 2 or self.ssrc is None:
            return  # padding-only probe on the RTX SSRC
        data = info.data
        osn = (data[po] << 8) | data[po + 1]
        buf = bytearray(data[:po])
        buf += data[po + 2 :]
        buf[1] = (buf[1] & 0x80) | self.producer.payload_type
        buf[2] = osn >> 8
        buf[3] = osn & 0xFF
        buf[8:12] = self.ssrc.to_bytes(4, "big")
        try:
            original = parse_rtp(bytes(buf), self.producer.transport.ext_kinds)
        except ValueError:
            return
        original.arrival = info.arrival
        self.on_rtp(original, now, recovered=True)

    # ---------------------------------------------------------------- loss and NACK

    def _gap(self, last: int, seq: int, now: float) -> None:
        new = []
        s = (last + 1) & 0xFFFF
        while s != seq:
            if s not in self.missing:
                self.missing[s] = [now, now, 1.0]
                new.append(s)
            s = (s + 1) & 0xFFFF
        if new and self.producer.nack:
            self._send_nack(new)
        self._arm_nack_timer()

    def _send_nack(self, seqs: list[int]) -> None:
        if self.ssrc is None:
            return
        t = self.producer.transport
        t.send_rtcp(rtcp.pack_nack(t.rtcp_ssrc, self.ssrc, seqs))
        self.nacks_sent += len(seqs)

    def _arm_nack_timer(self) -> None:
        if self._nack_timer is None and self.missing:
            self._nack_timer = asyncio.get_running_loop().call_later(NACK_INTERVAL, self._nack_retry)

    def _nack_retry(self) -> None:
        self._nack_timer = None
        now = time.monotonic()
        retry = []
        rtt = max(self.producer.transport.rtt, 0.02)
        for seq, entry in list(self.missing.items()):
            if now - entry[0] > NACK_MAX_AGE or entry[2] >= NACK_MAX_TRIES:
                del self.missing[seq]
                self.lost_for_good += 1
            elif now - entry[1] >= rtt * 1.5:
                entry[1] = now
                entry[2] += 1
                retry.append(seq)
        if retry and self.producer.nack:
            self._send_nack(retry)
        self._arm_nack_timer()

    # ---------------------------------------------------------------- RTCP

    def on_sr(self, sr: rtcp.SenderReport, now: float) -> None:
        self.sr_ntp = sr.ntp
        self.sr_rtp = sr.rtp_ts
        self.sr_arrival = now

    def rtp_time_at(self, now: float) -> Optional[int]:
        """The publisher's RTP timestamp for wall-clock `now`, from its last sender report."""
        if not self.sr_arrival:
            return None
        return (self.sr_rtp + int((now - self.sr_arrival) * self.clock_rate)) & 0xFFFFFFFF

    def report_block(self, now: float) -> Optional[rtcp.ReportBlock]:
        if not self.started or self.ssrc is None:
            return None
        extended_max = self.cycles + self.max_seq
        expected = extended_max - self.base_seq + 1
        lost = expected - self.received
        expected_interval = expected - self.expected_prior
        received_interval = self.received - self.received_prior
        self.expected_prior = expected
        self.received_prior = self.received
        lost_interval = expected_interval - received_interval
        fraction = 0
        if expected_interval > 0 and lost_interval > 0:
            fraction = min(255, (lost_interval << 8) // expected_interval)
        lsr = dlsr = 0
        if self.sr_arrival:
            lsr = rtcp.ntp_middle(self.sr_ntp)
            dlsr = int((now - self.sr_arrival) * 65536) & 0xFFFFFFFF
        return rtcp.ReportBlock(self.ssrc, fraction, lost, extended_max, int(self.jitter), lsr, dlsr)

    def _new_temporal_layer(self, tid: int) -> None:
        # until measured, libwebrtc's split of a layer's rate over 2 or 3 temporal layers.
        # The 2-bit TID field can say 3; no encoder sends four layers, and a stray one must
        # not leave tl_share shorter than the allocator's steps (found by tests/test_fuzz.py)
        tid = min(tid, 2)
        if tid < self.temporal_layers:
            return
        self.temporal_layers = tid + 1
        self.tl_share = list(TL_DEFAULT_SHARE.get(tid + 1, (1.0,))) + [1.0] * (3 - tid)

    def update_rate(self, now: float) -> None:
        span = now - self._rate_time
        if span >= 0.5:
            self.bitrate = self._rate_octets * 8 / span
            self.bitrate_peak = max(self.bitrate, self.bitrate_peak * 0.85)
            self.bitrate_mean = mean_rate(self.bitrate_mean, self.bitrate)
            if now - self.last_packet < 0.25:
                self.bitrate_known = self.bitrate_peak
            self._rate_octets = 0
            self._rate_time = now
            octets = self._tl_octets
            total = sum(octets)
            if self.temporal_layers > 1 and total > 2000:
                acc = 0
                share = self.tl_share
                for t in range(self.temporal_layers):
                    acc += octets[t]
                    share[t] += 0.3 * (acc / total - share[t])  # smoothed: keyframes land in TL0
            self._tl_octets = [0, 0, 0, 0]

    # ---------------------------------------------------------------- keyframes

    def request_keyframe(self, now: float) -> bool:
        """Ask the publisher for a keyframe, at most every KEYFRAME_MIN_INTERVAL.

        Coalescing here is what keeps a subscriber storm (every receiver PLI-ing after a
        loss burst) from multiplying the publisher's bitrate.
        """
        if self.ssrc is None:
            return False
        if self.keyframe_requested and now - self.keyframe_requested < KEYFRAME_RETRY:
            return False
        if now - self.producer.last_keyframe_request < KEYFRAME_MIN_INTERVAL / max(1, len(self.producer.streams)):
            return False
        self.keyframe_requested = now
        self.producer.last_keyframe_request = now
        t = self.producer.transport
        if self.producer.pli:
            t.send_rtcp(rtcp.pack_pli(t.rtcp_ssrc, self.ssrc))
        elif self.producer.fir:
            self._fir_seq = (self._fir_seq + 1) & 0xFF
            t.send_rtcp(rtcp.pack_fir(t.rtcp_ssrc, self.ssrc, self._fir_seq))
        else:
            return False
        self.producer.keyframe_requests += 1
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("keyframe asked of %s layer %s (ssrc %08x)", t.participant_id, self.layer, self.ssrc)
        return True

    def close(self) -> None:
        if self._nack_timer is not None:
            self._nack_timer.cancel()
            self._nack_timer = None
        for sink in list(self.sinks):
            sink.source_closed(self)
        self.sinks.clear()


class Producer:
    """One published track (audio or video) of one participant."""

    def __init__(
        self,
        transport: "WebRtcTransport",
        kind: str,
        mid: str,
        mime: str,
        clock_rate: int,
        payload_type: int,
        rtx_payload_type: Optional[int],
        feedback: set[str],
        rids: list[str],
    ) -> None:
        self.transport = transport
        self.participant_id = transport.participant_id
        self.kind = kind
        self.mid = mid
        self.mime = mime
        self.clock_rate = clock_rate
        self.payload_type = payload_type
        self.rtx_payload_type = rtx_payload_type
        self.is_vp8 = mime == "video/vp8"
        self.nack = "nack" in feedback
        self.pli = "nack pli" in feedback
        self.fir = "ccm fir" in feedback
        self.level_sum = 0  # ssrc-audio-level values (0 loud .. 127 silent) since the last speaker window
        self.level_n = 0
        self.muted = False  # forwarding stopped by the chair
        self.last_keyframe_request = 0.0
        self.keyframe_requests = 0
        self.closed = False
        if rids:
            self.streams = [RecvStream(self, i, rid) for i, rid in enumerate(rids)]
        else:
            self.streams = [RecvStream(self, 0)]

    def stream_for_rid(self, rid: str) -> Optional[RecvStream]:
        for s in self.streams:
            if s.rid == rid:
                return s
        return None

    @property
    def simulcast(self) -> bool:
        return len(self.streams) > 1

    def best_stream(self) -> Optional[RecvStream]:
        """The highest layer that is currently flowing (packets within the last second)."""
        now = time.monotonic()
        for s in reversed(self.streams):
            if s.ssrc is not None and now - s.last_packet < 1.0:
                return s
        for s in reversed(self.streams):
            if s.ssrc is not None:
                return s
        return self.streams[-1]

    def close(self) -> None:
        self.closed = True
        for s in self.streams:
            s.close()
