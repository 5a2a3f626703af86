"""The hub's own uplink: one egress budget shared by every receiver this process serves.

Each receiver's allocator adapts to that receiver's downlink; none of them knows about the
server's uplink, which all of them share. With 164 sites each taking a stage plus eight
thumbnails, what the receivers could take together (hundreds of Mbit/s) is far more than a
provincial hub's line carries: that line, not any one site's, is where a big conference
chokes. Saturating it hurts every site at once (queueing delay, loss, GCC backing off
everywhere), so the budget keeps the planned total under the operator's capacity.

Every `INTERVAL_S` the budget looks at every receiver's slots and, when what they all could
take (each within its own link's estimate) exceeds the capacity less `HEADROOM`, hands
out the capacity by priority, the same order for everyone:

  1. audio (always; it is a small, measured reserve),
  2. the stage (slot 0: the floor, else the hub) at its lowest layer,
  3. the stage's higher layers,
  4. the dominant speaker's thumbnail,
  5. the other thumbnails, slot 1 first.

So under pressure the last thumbnails are paused first, then the speaker's, then the stage
comes down a layer, and the floor keeps its top layer the longest. Within one step,
receivers are served in a fixed order (by participant id) so caps do not hop between
receivers from one round to the next. The result is a per-slot layer cap on each
receiver's StreamAllocator (`allocator.limits`), which it applies together with its own
estimate; with room to spare the caps are lifted (None) and nothing changes.

The capacity can be changed at run time (`set_capacity`): with several worker processes
each runs its own budget over its own receivers with a share of the total.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Callable, Iterable, Optional

from .allocator import NOMINAL_BPS, THUMBNAIL_MAX_LAYER

if TYPE_CHECKING:
    from .consumer import Consumer
    from .transport import WebRtcTransport

logger = logging.getLogger(__name__)

INTERVAL_S = 0.5
#: Share of the capacity kept free for what the plan does not count: retransmissions,
#: probes, RTCP, keyframe bursts and a layer switch's overlap.
HEADROOM = 0.1

# priority classes, lowest number served first (cut last)
STAGE_LOW, STAGE_UP, SPEAKER, THUMB = 0, 1, 2, 3
#: Streams are costed at their average over this long (plus RATE_MARGIN), not at the
#: allocator's decaying peak: a keyframe every few seconds would make the plan, and with it
#: the thumbnails, flap; the uplink's queue absorbs a keyframe, not a sustained excess.
AVERAGE_S = 4.0
RATE_MARGIN = 1.1


class EgressBudget:
    def __init__(
        self,
        capacity_bps: float,
        receivers: Callable[[], Iterable["WebRtcTransport"]],
        interval: float = INTERVAL_S,
        headroom: float = HEADROOM,
    ) -> None:
        self.capacity_bps = float(capacity_bps)  # 0: unlimited
        self.receivers = receivers
        self.interval = interval
        self.headroom = headroom
        self._timer: Optional[asyncio.TimerHandle] = None
        self._last_time: Optional[float] = None
        self._bytes: dict[str, int] = {}  # participant id -> bytes sent at the last round
        # figures of the last round (the console and /metrics read them)
        self.demand_bps = 0.0  # what all receivers could take, each within its own link
        self.planned_bps = 0.0  # what the caps allow (== demand when not limiting)
        self.sent_bps = 0.0  # measured egress over the last interval (all packets)
        self.limiting = False
        self.limited_receivers = 0
        self.paused_slots = 0  # video slots the budget paused
        self.rounds = 0
        self._samples: dict[int, deque] = {}  # id(RecvStream) -> (time, octets) over AVERAGE_S

    # ---------------------------------------------------------------- control

    def set_capacity(self, capacity_bps: float) -> None:
        """Change the capacity (0 = unlimited) and re-plan at once."""
        self.capacity_bps = max(0.0, float(capacity_bps))
        self.run()

    def start(self) -> None:
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.interval, self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        self._timer = None
        try:
            self.run()
        except Exception:  # the budget must never take forwarding down
            logger.exception("egress budget round failed")
        self.start()

    # ---------------------------------------------------------------- the plan

    def run(self, now: Optional[float] = None) -> None:
        now = time.monotonic() if now is None else now
        transports = sorted(
            (t for t in self.receivers() if t.negotiated and not t.closed),
            key=lambda t: t.participant_id,
        )
        self._measure(transports, now)
        self.rounds += 1
        self._update_rates(transports, now)
        if self.capacity_bps <= 0:  # unlimited: only measure (the console shows the use)
            self.limiting = False
            self.demand_bps = self.planned_bps = 0.0
            self.limited_receivers = self.paused_slots = 0
            for t in transports:
                self._set_limits(t, None)
            return
        audio_total = 0.0
        # (class, slot index, order, transport, consumer, layer, cost): one step each
        steps: list[tuple] = []
        own: dict[int, float] = {}  # id(transport) -> what its own link leaves after audio
        for order, t in enumerate(transports):
            a = t.allocator
            audio_total += a.audio_bps
            own[id(t)] = max(0.0, t.estimator.estimate - a.audio_bps)
            speakers = getattr(t.router, "speakers", None)
            dominant = speakers.dominant if speakers is not None else None
            for c in t.consumers["video"]:
                p = c.producer
                if p is None or p.muted or not p.streams:
                    continue
                if c.index == 0:
                    top = len(p.streams) - 1
                    prev = 0.0
                    for layer in range(top + 1):
                        rate = self.stream_rate(p.streams[layer], layer)
                        steps.append((STAGE_LOW if layer == 0 else STAGE_UP, layer, order, t, c, layer, rate - prev))
                        prev = rate
                else:
                    cls = SPEAKER if p.participant_id == dominant else THUMB
                    top = min(THUMBNAIL_MAX_LAYER, len(p.streams) - 1)
                    prev = 0.0
                    for layer in range(top + 1):
                        rate = self.stream_rate(p.streams[layer], layer)
                        steps.append((cls, c.index * 8 + layer, order, t, c, layer, rate - prev))
                        prev = rate
        steps.sort(key=lambda s: (s[0], s[1], s[2]))

        # what everyone could take, each within its own link (a step its link cannot carry
        # costs the uplink nothing: its allocator would not send it)
        room = dict(own)
        granted: dict[int, int] = {}  # id(consumer) -> highest layer within the receiver's link
        demand = 0.0
        for _cls, _k, _o, t, c, layer, cost in steps:
            if granted.get(id(c), -1) != layer - 1 or cost > room[id(t)]:
                continue
            room[id(t)] -= cost
            granted[id(c)] = layer
            demand += cost
        self.demand_bps = demand + audio_total
        usable = self.capacity_bps * (1.0 - self.headroom)
        if self.demand_bps <= usable:
            self.limiting = False
            self.planned_bps = self.demand_bps
            self.limited_receivers = self.paused_slots = 0
            for t in transports:
                self._set_limits(t, None)
            return

        # over the budget: hand it out by priority, stopping at the first step that does
        # not fit (a later, cheaper step would break the priority order)
        left = usable - audio_total
        room = dict(own)
        allowed: dict[int, int] = {}
        planned = audio_total
        for _cls, _k, _o, t, c, layer, cost in steps:
            if allowed.get(id(c), -1) != layer - 1 or cost > room[id(t)]:
                continue
            if cost > left:
                break
            left -= cost
            room[id(t)] -= cost
            allowed[id(c)] = layer
            planned += cost
        self.limiting = True
        self.planned_bps = planned
        limited = paused = 0
        for t in transports:
            limits: dict["Consumer", int] = {}
            capped = False
            for c in t.consumers["video"]:
                if c.producer is None:
                    continue
                cap = allowed.get(id(c), -1)
                limits[c] = cap
                if cap < granted.get(id(c), -1):
                    capped = True
                    paused += cap < 0
            limited += capped
            self._set_limits(t, limits)
        self.limited_receivers = limited
        self.paused_slots = paused

    def stream_rate(self, stream, layer: int) -> float:
        """What forwarding one layer costs the uplink, as the plan counts it: its average
        over the last AVERAGE_S (from its byte counter) plus RATE_MARGIN while it flows;
        its peak while it has flowed for less than a second; a nominal rate when it does
        not flow (a layer paused at the publisher because nobody took it)."""
        nominal = NOMINAL_BPS[min(layer, len(NOMINAL_BPS) - 1)]
        if stream.ssrc is None or time.monotonic() - stream.last_packet >= 1.0:
            return nominal
        samples = self._samples.get(id(stream))
        if samples and len(samples) > 1 and samples[-1][0] - samples[0][0] >= 1.0:
            (t0, o0), (t1, o1) = samples[0], samples[-1]
            rate = (o1 - o0) * 8 / (t1 - t0)
        else:
            rate = max(stream.bitrate, stream.bitrate_peak)
        return max(rate * RATE_MARGIN, nominal * 0.25)

    def _update_rates(self, transports: list["WebRtcTransport"], now: float) -> None:
        """One (time, byte count) sample per stream per round; a stream that stopped
        starts a fresh window when it resumes (idle time must not dilute its rate)."""
        seen: dict[int, deque] = {}
        for t in transports:
            for c in t.consumers["video"]:
                p = c.producer
                if p is None:
                    continue
                for stream in p.streams:
                    key = id(stream)
                    if key in seen:
                        continue
                    samples = self._samples.get(key)
                    if samples is None or now - stream.last_packet >= 1.0:
                        samples = deque()
                    samples.append((now, stream.octets))
                    while len(samples) > 2 and now - samples[1][0] >= AVERAGE_S:
                        samples.popleft()
                    seen[key] = samples
        self._samples = seen

    @staticmethod
    def _set_limits(t: "WebRtcTransport", limits: Optional[dict["Consumer", int]]) -> None:
        a = t.allocator
        if a.limits == limits:
            return
        a.limits = limits
        if t.connected.is_set() and not t.closed:
            a.run()

    def _measure(self, transports: list["WebRtcTransport"], now: float) -> None:
        """Bytes every receiver was sent since the last round (a receiver that left or
        joined in between does not make the figure jump)."""
        sent = 0
        counts: dict[str, int] = {}
        for t in transports:
            counts[t.participant_id] = t.bytes_out
            sent += t.bytes_out - self._bytes.get(t.participant_id, t.bytes_out)
        if self._last_time is not None and now > self._last_time:
            self.sent_bps = max(0, sent) * 8 / (now - self._last_time)
        self._bytes = counts
        self._last_time = now

    # ---------------------------------------------------------------- reporting

    def snapshot(self) -> dict:
        """For the console and /metrics: capacity, measured use and the plan, bit/s."""
        return {
            "capacity_bps": round(self.capacity_bps),
            "sent_bps": round(self.sent_bps),
            "demand_bps": round(self.demand_bps),
            "planned_bps": round(self.planned_bps),
            "limiting": self.limiting,
            "limited_receivers": self.limited_receivers,
            "paused_slots": self.paused_slots,
        }
