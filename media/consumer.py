"""One outgoing stream to a subscriber: a fixed slot whose source can change.

A subscriber's peer connection has a fixed number of receive slots (one SSRC each, announced
once in the answer). Which publisher, and which simulcast layer of it, feeds a slot changes
over the meeting; the subscriber's decoder must still see one continuous stream. So every
forwarded packet gets this slot's SSRC, payload type and header extensions, and sequence
numbers, timestamps and VP8 PictureID/TL0PICIDX shifted by offsets that are recomputed only
when the source changes, and only at a keyframe of the new source (the old source keeps
flowing until then, so a switch never freezes the picture).

The per-packet work is: one bytearray for the rewritten packet (kept as the NACK history
entry, so answering a NACK costs no copy), a struct.pack_into for seq/ts, a few byte stores,
then SRTP and sendto through the transport.
"""

from __future__ import annotations

import logging
import random
import struct
import time
from typing import TYPE_CHECKING, Optional

from . import rtcp
from .fastpath import NATIVE, ConsumerCore
from .rtp import RtpInfo

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from .producer import Producer, RecvStream
    from .transport import WebRtcTransport

HISTORY = 512  # packets kept per video slot for retransmission (~2 s at 720p)
_MASK = HISTORY - 1
RESEND_GUARD = 0.05  # do not resend the same packet twice within this, s
MAX_RESENDS = 4  # retransmissions of one packet at most (LiveKit: 3); then it is the decoder's problem
RTX_MAX_BACKLOG_S = 0.25  # behind this much in the pacer a retransmission is refused (see on_nack)
SWITCH_GUARD = 300  # after a switch, drop stragglers older than the switch point for this many packets
_pack_seq_ts = struct.Struct("!HI").pack_into


class Consumer(ConsumerCore):
    """One receive slot. The per-copy path is `write`: native (ConsumerCore, media/_fastpath.c)
    when built, else `_write_py`; both read and write the same attributes."""

    def __init__(
        self,
        transport: "WebRtcTransport",
        kind: str,
        index: int,
        mid: str,
        ssrc: int,
        payload_type: int,
        clock_rate: int,
        rtx_ssrc: Optional[int],
        rtx_payload_type: Optional[int],
        abs_send_time_id: int = 0,
        audio_level_id: int = 0,
        transport_cc_id: int = 0,
        nack: bool = False,
    ) -> None:
        self.transport = transport
        self.kind = kind
        self.index = index
        self.mid = mid
        self.ssrc = ssrc
        self.payload_type = payload_type
        self.clock_rate = clock_rate
        self.rtx_ssrc = rtx_ssrc
        self.rtx_payload_type = rtx_payload_type
        self.is_video = kind == "video"
        self.nack = nack
        # header template: fixed header + one-byte extension block with this subscriber's ids
        ext = bytearray()
        self._abs_off = 0
        self._level_off = 0
        if abs_send_time_id:
            self._abs_off = 12 + 4 + len(ext) + 1
            ext += bytes([(abs_send_time_id << 4) | 2, 0, 0, 0])
        if audio_level_id:
            self._level_off = 12 + 4 + len(ext) + 1
            ext += bytes([(audio_level_id << 4) | 0, 127])
        self.tcc_off = 0
        if transport_cc_id:
            self.tcc_off = 12 + 4 + len(ext) + 1
            ext += bytes([(transport_cc_id << 4) | 1, 0, 0])
        while len(ext) % 4:
            ext.append(0)
        header = bytearray(12)
        header[0] = 0x90 if ext else 0x80
        header[1] = payload_type
        header[8:12] = ssrc.to_bytes(4, "big")
        if ext:
            header += b"\xbe\xde" + (len(ext) // 4).to_bytes(2, "big") + ext
        self._template = bytes(header)
        self.header_len = len(header)
        # assignment (by the Router) and layer choice (by the allocator)
        self.assigned: Optional["Producer"] = None
        self.fresh = False  # newly assigned: the allocator picks its layer without hold
        self.reason = "ok"  # why this slot gets what it gets: ok, congestion
        # source and rewriting state
        self.source: Optional["RecvStream"] = None
        self.target: Optional["RecvStream"] = None
        self.target_since = 0.0
        self.paused = False
        self.seq_off = random.getrandbits(16)
        self.ts_off = random.getrandbits(32)
        self.pid_off = 0
        self.tl0_off = 0
        self.last_seq = 0
        self.last_ts = 0
        self.last_pid = 0
        self.last_tl0 = 0
        self.last_marker = 1
        self.last_send = 0.0
        self.last_src = 0  # source seq of the newest packet seen (forwarded or dropped)
        # VP8 temporal layers: forward temporal ids <= max_tid. A lower want_tid applies at the
        # next frame start; a higher one at a layer-sync (Y) frame or a keyframe, where the
        # frames that follow reference nothing that was dropped. Dropped packets shift later
        # seqs (and dropped frames later PictureIDs) down, so the receiver sees no gap; the
        # ranges let a late (recovered) packet find the offsets of its time.
        self.max_tid = 3
        self.want_tid = 3
        self._target_tid = 3
        self._tl_gate = 3  # max_tid while no change is pending, else -1 (one compare per packet)
        self._tl_ranges: list[list[int]] = []  # [first src seq, last src seq, seq_off before, pid_off before]
        self._tl_drop_marker = 0
        self._tl_drop_pid = -1  # source PictureID of the last dropped frame
        self.tl_dropped = 0
        self.sent_any = False
        self._switch_seq = 0
        self._guard = 0
        self._rtx_seq = random.getrandbits(16)
        self._rtx_ssrc_bytes = rtx_ssrc.to_bytes(4, "big") if rtx_ssrc is not None else b""
        self.history: Optional[list] = [None] * HISTORY if self.is_video else None
        self.unsent = 0  # packets taken back from the pacer queue at a congestion drop
        self._resent_at = [0.0] * HISTORY if self.is_video else None
        self._resent_n = [0] * HISTORY if self.is_video else None
        # statistics
        self.packets = 0
        self.octets = 0
        self.retransmits = 0
        self.rtx_refused = 0  # NACKed packets not resent: the pacer held too much (on_nack)
        self.switches = 0
        self.rtt = 0.0
        self.fraction_lost = 0
        self.packets_lost = 0

    # ---------------------------------------------------------------- source selection

    @property
    def producer(self) -> Optional["Producer"]:
        return self.assigned

    @property
    def layer(self) -> int:
        stream = self.target or self.source
        return stream.layer if stream is not None else -1

    @property
    def temporal(self) -> int:
        """The highest temporal id asked for (of the target layer while a switch is pending)."""
        return self._target_tid if self.target is not None else self.want_tid

    def assign(self, producer: Optional["Producer"]) -> None:
        """The Router puts a publisher's track in this slot (None empties it). Start on the
        lowest layer; the allocator raises it as the link allows."""
        if producer is self.assigned:
            return
        self.assigned = producer
        self.paused = False
        if producer is None:
            self.set_source(None)
            return
        self.fresh = True
        self.set_source(producer.streams[0])

    def select(self, stream: "RecvStream", drop_current: bool = False, tid: int = 3, thin_current: bool = False) -> None:
        """Forward `stream` (a layer of the assigned producer) from its next keyframe, with
        temporal ids up to `tid`.

        Normally the current layer keeps flowing until then (no freeze). On a congestion
        downgrade the caller either thins it to its base temporal layer at once
        (`thin_current`: a fraction of the rate, still moving) or drops it at once
        (`drop_current`: the link cannot carry even that, and pushing it on would also
        drown the keyframe of the layer that fits)."""
        if self.paused:
            self.paused = False
        switching = self.source is not stream
        if drop_current and self.source is not None and switching:
            self._detach(self.source)
            self.source = None
            self._unsend_queued()
        self._target_tid = tid
        if not switching or self.source is None:
            self.set_temporal(tid)
        elif thin_current:
            self.set_temporal(0)
        self.set_source(stream)

    def _unsend_queued(self) -> None:
        """Take this slot's packets back from the pacer queue and rewind its sequence
        numbers over them, so the new layer's keyframe follows what the receiver really got
        (one seq skipped: the last frame it got may be cut short), and forget the old
        layer's packets so nothing the receiver NACKs brings them back."""
        if not self.sent_any:
            return
        history = self.history
        if history is not None:
            # nor does the receiver get the old layer's lost packets again: on a link that
            # cannot carry even its base layer, those retransmissions are what would hold
            # the lower layer's keyframe back (it decodes from the keyframe on anyway)
            for i in range(len(history)):
                history[i] = None
        wire = (self.ssrc.to_bytes(4, "big"),) + ((self._rtx_ssrc_bytes,) if self._rtx_ssrc_bytes else ())
        taken = self.transport.purge_queued(wire)
        media = [p for p in taken if p[8:12] == wire[0]]
        if not media:
            return
        for p in media:
            self.packets -= 1
            self.octets -= len(p) - self.header_len
        self.last_seq = (((media[0][2] << 8) | media[0][3]) - 1) & 0xFFFF
        self.last_marker = False
        self.unsent += len(media)

    def set_temporal(self, tid: int) -> None:
        """Forward temporal ids up to `tid` of the current source (3: all); takes effect at
        the next frame where that is safe, with no keyframe needed."""
        self.want_tid = tid
        self._tl_gate = self.max_tid if tid == self.max_tid else -1

    def pause(self) -> None:
        """Stop forwarding video to this slot (the link cannot carry even the lowest layer).
        Resuming goes through a keyframe switch, so the receiver sees no sequence gap.

        What the slot still has in the pacer is taken back too: at a cap, eight thumbnails
        paused with their packets queued held the link for ~2 s at the cut estimate, and the
        stage's lower layer waited behind them (the picture came down 3-5 s after the cap
        where the server had switched it in 1.1 s)."""
        self.paused = True
        self.set_source(None)
        self._unsend_queued()

    def set_source(self, stream: Optional["RecvStream"]) -> None:
        """Feed this slot from `stream` (None empties the slot).

        Video keeps the current source until the new one sends a keyframe; audio switches at
        the next packet, since every Opus packet is independently decodable.
        """
        now = time.monotonic()
        if stream is None:
            self._detach(self.target)
            self._detach(self.source)
            self.source = self.target = None
            return
        if stream is self.source:
            if self.target is not None:
                self._detach(self.target)
                self.target = None
            return
        if stream is self.target:
            return
        if self.target is not None:
            self._detach(self.target)
        self.target = stream
        self.target_since = now
        stream.sinks.append(self)
        if self.is_video:
            stream.request_keyframe(now)

    def _detach(self, stream: Optional["RecvStream"]) -> None:
        if stream is not None and self in stream.sinks:
            stream.sinks.remove(self)

    def source_closed(self, stream: "RecvStream") -> None:
        if stream is self.source:
            self.source = None
        if stream is self.target:
            self.target = None
        if stream.producer is self.assigned:
            self.assigned = None

    def _switch(self, info: RtpInfo, stream: "RecvStream", now: float) -> None:
        if self.source is not None and self.source is not stream:
            self._detach(self.source)
        self.source = stream
        self.target = None
        # a keyframe references nothing: any temporal layer may start here
        self.want_tid = self.max_tid = self._target_tid
        self._tl_gate = self.max_tid
        self._tl_ranges.clear()
        if self.sent_any:
            # continue right after what the subscriber has seen; skip one seq if the last
            # frame was cut short, so its decoder treats that frame as incomplete
            # (audio has no frames to cut short: every packet decodes alone, so no skip)
            self.seq_off = (self.last_seq + (1 if self.last_marker or not self.is_video else 2) - info.seq) & 0xFFFF
            step = max(1, int((now - self.last_send) * self.clock_rate))
            self.ts_off = (self.last_ts + step - info.ts) & 0xFFFFFFFF
            if info.vp8_pid_off >= 0:
                data = info.data
                off = info.vp8_pid_off
                pid = ((data[off] & 0x7F) << 8 | data[off + 1]) if info.vp8_pid_wide else data[off] & 0x7F
                self.pid_off = (self.last_pid + 1 - pid) & 0x7FFF
            if info.vp8_tl0_off >= 0:
                self.tl0_off = (self.last_tl0 + 1 - info.data[info.vp8_tl0_off]) & 0xFF
            self.switches += 1
        if logger.isEnabledFor(logging.DEBUG):
            # how long the slot waited for this keyframe: what a freeze at a switch is made of
            logger.debug("slot %s of %s: switched to layer %s after %.2f s", self.mid, self.transport.participant_id,
                         getattr(stream, "layer", "?"), now - self.target_since if self.target_since else 0.0)
        self._switch_seq = (info.seq + self.seq_off) & 0xFFFF
        self._guard = SWITCH_GUARD
        self.last_src = (info.seq - 1) & 0xFFFF

    # ---------------------------------------------------------------- packet path

    def _write_py(self, info: RtpInfo, stream: "RecvStream", now: float) -> None:
        if stream is not self.source:
            if stream is not self.target or not (info.keyframe or not self.is_video):
                return
            self._switch(info, stream, now)
        if self.paused:
            return
        if info.vp8_tid > self._tl_gate and not self._temporal(info):
            return
        seq = (info.seq + self.seq_off) & 0xFFFF
        pid_off = self.pid_off
        newest = True
        if self._guard:
            self._guard -= 1
            if ((seq - self._switch_seq) & 0xFFFF) >= 0x8000:
                return  # straggler from before the switch point
        if self.sent_any and ((info.seq - self.last_src) & 0xFFFF) >= 0x8000:
            newest = False  # reordered or recovered packet: forward, keep "last" as is
            if self._tl_ranges:
                offsets = self._late_offsets(info.seq)
                if offsets is None:
                    return  # it belongs to a dropped temporal-layer frame
                seq = (info.seq + offsets[0]) & 0xFFFF
                pid_off = offsets[1]
        ts = (info.ts + self.ts_off) & 0xFFFFFFFF
        out = bytearray(self._template)
        out += info.payload
        out[1] = self.payload_type | (info.marker << 7)
        _pack_seq_ts(out, 2, seq, ts)
        if info.padding:
            out[0] |= 0x20
        if self._abs_off:
            o = self._abs_off
            v = info.abs24
            out[o] = v >> 16
            out[o + 1] = (v >> 8) & 0xFF
            out[o + 2] = v & 0xFF
        if self._level_off and info.audio_level >= 0:
            out[self._level_off] = info.audio_level
        if info.vp8_pid_off >= 0:
            o = self.header_len + info.vp8_pid_off - info.payload_offset
            data = info.data
            src = info.vp8_pid_off
            if info.vp8_pid_wide:
                pid = ((((data[src] & 0x7F) << 8) | data[src + 1]) + pid_off) & 0x7FFF
                out[o] = 0x80 | (pid >> 8)
                out[o + 1] = pid & 0xFF
            else:
                pid = ((data[src] & 0x7F) + pid_off) & 0x7F
                out[o] = pid
            if newest:
                self.last_pid = pid
            if info.vp8_tl0_off >= 0:
                tl0 = (data[info.vp8_tl0_off] + self.tl0_off) & 0xFF
                out[self.header_len + info.vp8_tl0_off - info.payload_offset] = tl0
                if newest:
                    self.last_tl0 = tl0
        if newest:
            self.last_seq = seq
            self.last_src = info.seq
            self.last_ts = ts
            self.last_marker = info.marker
            self.last_send = now
            self.sent_any = True
        if self.history is not None:
            i = seq & _MASK
            self.history[i] = out
            self._resent_n[i] = 0
        self.packets += 1
        self.octets += len(out) - self.header_len
        self.transport.send_rtp(out, self.tcc_off, not self.is_video)

    if not NATIVE:
        write = _write_py

    def _temporal(self, info: RtpInfo) -> bool:
        """Slow path of the temporal filter (a packet above the gate, or a change pending):
        True to forward. A dropped packet shifts the offsets of everything after it."""
        tid = info.vp8_tid
        src = info.seq
        if self.sent_any and ((src - self.last_src) & 0xFFFF) >= 0x8000:
            # late (recovered upstream): write() drops it if it fell in a dropped range and
            # otherwise puts it in the hole its loss left, whatever the layer now: a whole
            # frame lost upstream must fill its PictureID, or libwebrtc waits for it until
            # the next keyframe; a fragment of a dropped frame never completes a frame there
            return True
        want = self.want_tid
        if want != self.max_tid and info.vp8_start:
            if want < self.max_tid:
                self.max_tid = want
            elif info.keyframe:
                self.max_tid = want
            elif self.max_tid < tid <= want and self._layer_sync(info):
                self.max_tid = tid  # this frame depends only on the base layer
        ranges = self._tl_ranges
        if tid <= self.max_tid:
            if self._tl_gate < 0 and ranges and ranges[-1][1] == self.last_src:
                # the first packet after a dropped one: when one packet is missing in between
                # and the dropped frame had not ended, it was its tail and goes with it
                gap = (src - self.last_src - 1) & 0xFFFF
                if gap == 1 and info.vp8_start and not self._tl_drop_marker:
                    ranges[-1][1] = (src - 1) & 0xFFFF
                    self.seq_off = (self.seq_off - gap) & 0xFFFF
            self._tl_gate = self.max_tid if self.want_tid == self.max_tid else -1
            return True
        # drop. One packet missing just before it (upstream loss) goes with it when it
        # can only be of a dropped frame: this frame's start (the packet before ended a
        # frame, or was dropped too), or the tail of the dropped frame before it. Otherwise
        # (or for a longer gap, which may hide a whole frame) the hole is kept: late, they
        # are forwarded into it.
        gap = (src - self.last_src - 1) & 0xFFFF if self.sent_any else 0
        if gap:
            prev_dropped = bool(ranges) and ranges[-1][1] == self.last_src
            if info.vp8_start:
                absorb = prev_dropped and not self._tl_drop_marker
            else:
                absorb = prev_dropped or bool(self.last_marker)
            if gap != 1 or not absorb:
                gap = 0
        first = (src - gap) & 0xFFFF
        if ranges and ranges[-1][1] == ((first - 1) & 0xFFFF):
            ranges[-1][1] = src
        else:
            ranges.append([first, src, self.seq_off, self.pid_off])
            if len(ranges) > 64:
                del ranges[0]
        self.seq_off = (self.seq_off - 1 - gap) & 0xFFFF
        if info.vp8_pid_off >= 0:  # one PictureID less per dropped frame (even if its start was lost)
            data, o = info.data, info.vp8_pid_off
            pid = ((data[o] & 0x7F) << 8 | data[o + 1]) if info.vp8_pid_wide else data[o] & 0x7F
            if pid != self._tl_drop_pid:
                self._tl_drop_pid = pid
                self.pid_off = (self.pid_off - 1) & 0x7FFF
        self.last_src = src
        self._tl_drop_marker = info.marker
        self._tl_gate = -1  # the next packet comes here too (see above)
        self.tl_dropped += 1
        return False

    @staticmethod
    def _layer_sync(info: RtpInfo) -> bool:
        """The Y bit of the VP8 descriptor's T/K byte (RFC 7741 4.2)."""
        data = info.data
        if info.vp8_tl0_off >= 0:
            off = info.vp8_tl0_off + 1
        elif info.vp8_pid_off >= 0:
            off = info.vp8_pid_off + (2 if info.vp8_pid_wide else 1)
        else:
            off = info.payload_offset + 2
        return off < len(data) and bool(data[off] & 0x20)

    def _late_offsets(self, src: int) -> Optional[tuple[int, int]]:
        """(seq offset, PictureID offset) in force when `src` was new; None if it lies in a
        dropped range (or before everything remembered)."""
        seq_off, pid_off = self.seq_off, self.pid_off
        ranges = self._tl_ranges
        for first, last, seq_before, pid_before in reversed(ranges):
            if 0 < ((src - last) & 0xFFFF) < 0x8000:
                return seq_off, pid_off  # after this range
            if ((src - first) & 0xFFFF) < 0x8000:
                return None  # inside it
            seq_off, pid_off = seq_before, pid_before
        return (seq_off, pid_off) if len(ranges) < 64 else None

    # ---------------------------------------------------------------- feedback from the subscriber

    def on_nack(self, seqs: list[int]) -> None:
        history = self.history
        if history is None or self.paused:
            return  # a paused slot's link is congested: retransmitting would only add to it
        # Behind the pacer's backlog a retransmission arrives too late to help and adds to the
        # congestion that lost the packet: at 2 Mbit/s the pacer's queue sat at its 1 s cap and
        # dropped ~70 packets a second, each NACKed, each copy queued behind a second of media
        # and NACKed again 50 ms later, up to 4 times: several times the media's own rate fed
        # into a full queue (8 freezes in 30 s). So none over RTX_MAX_BACKLOG_S of backlog, and
        # under it no second copy while the first may still be queued (libwebrtc limits
        # retransmissions to its estimate; mediasoup resends a packet at most once per RTT).
        t = self.transport
        backlog_s = t.pace_backlog_s()
        if backlog_s > RTX_MAX_BACKLOG_S:
            self.rtx_refused += len(seqs)
            return
        guard = RESEND_GUARD + backlog_s
        now = time.monotonic()
        resent = self._resent_at
        count = self._resent_n
        for seq in seqs:
            i = seq & _MASK
            pkt = history[i]
            if pkt is None or ((pkt[2] << 8) | pkt[3]) != seq or now - resent[i] < guard:
                continue
            if count[i] >= MAX_RESENDS:
                continue  # a receiver asking again and again would only flood its own link
            count[i] += 1
            resent[i] = now
            # RFC 4588 when negotiated, else the same packet again (RFC 4585 allows both)
            t.send_rtp(self.rtx_copy(pkt) or pkt, self.tcc_off)
            self.retransmits += 1

    def rtx_copy(self, pkt: bytearray) -> Optional[bytearray]:
        """An RTX-wrapped copy of a sent packet: answers NACKs, and probing reuses recent
        media this way. None when the subscriber did not negotiate RTX."""
        if self.rtx_ssrc is None or self.rtx_payload_type is None:
            return None
        hl = self.header_len
        rtx = bytearray(pkt[:hl])
        self._rtx_seq = (self._rtx_seq + 1) & 0xFFFF
        rtx[1] = (pkt[1] & 0x80) | self.rtx_payload_type
        rtx[2] = self._rtx_seq >> 8
        rtx[3] = self._rtx_seq & 0xFF
        rtx[8:12] = self._rtx_ssrc_bytes
        rtx += pkt[2:4]
        rtx += memoryview(pkt)[hl:]
        return rtx

    def padding_packet(self, size: int) -> Optional[bytearray]:
        """A padding-only RTX packet (RFC 3550 padding, at most 255 bytes): probing when no
        media history exists, e.g. while this slot is paused."""
        if self.rtx_ssrc is None or self.rtx_payload_type is None:
            return None
        size = max(1, min(255, size))
        pkt = bytearray(self._template)
        self._rtx_seq = (self._rtx_seq + 1) & 0xFFFF
        pkt[0] |= 0x20
        pkt[1] = self.rtx_payload_type
        pkt[2] = self._rtx_seq >> 8
        pkt[3] = self._rtx_seq & 0xFF
        pkt[4:8] = self.last_ts.to_bytes(4, "big")
        pkt[8:12] = self._rtx_ssrc_bytes
        pkt += bytes(size - 1)
        pkt.append(size)
        return pkt

    def request_keyframe(self) -> None:
        stream = self.target or self.source
        if stream is not None:
            stream.request_keyframe(time.monotonic())

    def on_report(self, block: rtcp.ReportBlock, now: float) -> None:
        self.fraction_lost = block.fraction_lost
        self.packets_lost = block.packets_lost
        if block.lsr:
            rtt = ((rtcp.ntp_middle(rtcp.ntp_now()) - block.lsr - block.dlsr) & 0xFFFFFFFF) / 65536.0
            if rtt < 10:
                self.rtt = rtt
                self.transport.rtt = rtt

    def sender_report(self, now: float, ntp: int) -> Optional[bytes]:
        """An SR whose RTP time is the publisher's (from its own SR) shifted by this slot's
        offset, so audio and video of one site keep their capture-time relation; without a
        publisher SR, extrapolate from the last packet sent."""
        if not self.sent_any:
            return None
        rtp_ts: Optional[int] = None
        if self.source is not None:
            pub = self.source.rtp_time_at(now)
            if pub is not None:
                rtp_ts = (pub + self.ts_off) & 0xFFFFFFFF
        if rtp_ts is None:
            rtp_ts = (self.last_ts + int((now - self.last_send) * self.clock_rate)) & 0xFFFFFFFF
        return rtcp.pack_sr(self.ssrc, ntp, rtp_ts, self.packets, self.octets)

    def close(self) -> None:
        self.set_source(None)
        self.history = None
