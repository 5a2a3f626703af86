"""Bandwidth estimation toward one subscriber (the SFU -> site downlink).

Two signals, the better one when the site offers it:
- transport-cc (browsers): per-packet send and arrival times. The delay-based part is
  send-side GCC as libwebrtc runs it today: packets sent within 5 ms form a group; each
  group's delay variation (arrival delta - send delta) is accumulated, smoothed, and a
  least-squares slope over the last 20 groups is compared with an adaptive threshold
  (`Trendline`, in the manner of libwebrtc's TrendlineEstimator); the over-use signal
  drives AIMD rate control (aiortc's AimdRateControl, once per feedback packet). This
  replaced aiortc's per-group Kalman estimator: one pass over each feedback, a few float
  operations per group and no per-group allocation. Loss comes from the same feedback, so
  it counts only packets the SFU sent (a publisher's own uplink loss does not lower every
  subscriber's estimate).
- REMB + receiver reports (clients without transport-cc): the receiver's own estimate,
  capped by a loss-based estimate from RR fraction lost.

Probing (see `ProbeResult`) is how an estimate climbs faster than GCC's 8 %/s: the
allocator sends padding/RTX at a target rate, and if the feedback shows it all arrived at
that rate, the estimate jumps there.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass
from typing import Optional

from aiortc.rate import AimdRateControl, BandwidthUsage

START_BPS = 300_000  # unverified until probed: start low, probe at once
MIN_BPS = 60_000
MAX_BPS = 30_000_000
LOSS_LOW = 0.02
LOSS_HIGH = 0.10
GROUP_S = 0.005  # send-time burst that forms one packet group (libwebrtc's kBurstDeltaThresholdMs)
APP_LIMITED = 0.7  # sending below this share of the estimate: the link's limit was not reached
DECREASE_MIN_S = 0.2  # over-use cuts at most this often (libwebrtc: one RTT, at most 200 ms)
# ... and only once this many packet groups sent after the last cut are in the trendline: its
# 20-group window spans ~0.6 s at 300 kbit/s (one packet a group), so a cut 0.2 s after the
# last one was judged on the groups that caused that one, and every cut of the same burst
# compounded (300 -> 117 kbit/s in a second while sending half the link; a few ms at Mbit/s)
FRESH_GROUPS = 10
ACKED_RECENT_S = 0.5  # the received rate a loss cut is taken from is read over this
CAPACITY_TTL_S = 300.0  # a link's measured capacity is trusted this long without a new probe
CAPACITY_CLEAR = 1.1  # a probe through at this x the measured capacity says the link changed
CAPACITY_SHARE = 0.95  # the estimate and the pacer stay below this share of it (a margin for bursts)

NORMAL, OVERUSING, UNDERUSING = 0, 1, -1

logger = logging.getLogger(__name__)


class Trendline:
    """Delay-gradient over-use detector over packet groups (send-side GCC's trendline).

    `update` takes one group delta: how much longer (ms) the receiver took between two
    groups than the SFU took to send them. Accumulated and smoothed, the delay's slope over
    the last WINDOW groups (least squares, kept as running sums) times min(groups, 60) x
    GAIN is the "modified trend"; over-use is a trend above the adaptive threshold for more
    than 10 ms of send time on at least two groups, with the slope not falling.
    """

    WINDOW = 20
    SMOOTHING = 0.9
    GAIN = 4.0
    K_UP = 0.0087
    K_DOWN = 0.039
    OVERUSE_MS = 10.0

    __slots__ = (
        "acc", "smoothed", "n", "origin", "points", "sx", "sy", "sxx", "sxy", "trend", "threshold",
        "last_threshold_ms", "time_over", "over_count", "state",
    )

    def __init__(self) -> None:
        self.acc = 0.0
        self.smoothed = 0.0
        self.n = 0  # group deltas seen (capped)
        self.origin = -1.0  # arrival (ms) that x is measured from; rebased now and then
        self.points: deque = deque()
        self.sx = self.sy = self.sxx = self.sxy = 0.0
        self.trend = 0.0
        self.threshold = 12.5
        self.last_threshold_ms = -1.0
        self.time_over = -1.0
        self.over_count = 0
        self.state = NORMAL

    def update(self, recv_delta_ms: float, send_delta_ms: float, arrival_ms: float) -> int:
        if self.n < 1000:
            self.n += 1
        self.acc += recv_delta_ms - send_delta_ms
        y = self.smoothed = self.SMOOTHING * self.smoothed + (1 - self.SMOOTHING) * self.acc
        if self.origin < 0 or arrival_ms - self.origin > 60_000.0:
            self._rebase(arrival_ms)
        x = arrival_ms - self.origin
        points = self.points
        points.append((x, y))
        self.sx += x
        self.sy += y
        self.sxx += x * x
        self.sxy += x * y
        if len(points) > self.WINDOW:
            ox, oy = points.popleft()
            self.sx -= ox
            self.sy -= oy
            self.sxx -= ox * ox
            self.sxy -= ox * oy
        trend = self.trend
        k = len(points)
        if k == self.WINDOW:
            den = k * self.sxx - self.sx * self.sx
            if den > 1e-9:
                trend = (k * self.sxy - self.sx * self.sy) / den
        return self._detect(trend, send_delta_ms, arrival_ms)

    def _rebase(self, arrival_ms: float) -> None:
        """Measure x from a recent arrival again: running sums of squares of ever-growing
        times would lose precision over a long meeting."""
        shift = arrival_ms - self.origin if self.origin >= 0 else 0.0
        self.origin = arrival_ms
        pts = deque((x - shift, y) for x, y in self.points)
        self.points = pts
        self.sx = sum(x for x, _ in pts)
        self.sy = sum(y for _, y in pts)
        self.sxx = sum(x * x for x, _ in pts)
        self.sxy = sum(x * y for x, y in pts)

    def _detect(self, trend: float, send_delta_ms: float, now_ms: float) -> int:
        if self.n < 2:
            self.trend = trend
            return self.state
        modified = min(self.n, 60) * trend * self.GAIN
        th = self.threshold
        if modified > th:
            if self.time_over < 0:
                self.time_over = send_delta_ms / 2  # assume half of this delta was over-use
            else:
                self.time_over += send_delta_ms
            self.over_count += 1
            if self.time_over > self.OVERUSE_MS and self.over_count > 1 and trend >= self.trend:
                self.time_over = 0.0
                self.over_count = 0
                self.state = OVERUSING
        elif modified < -th:
            self.time_over = -1.0
            self.over_count = 0
            self.state = UNDERUSING
        else:
            self.time_over = -1.0
            self.over_count = 0
            self.state = NORMAL
        self.trend = trend
        # adaptive threshold: follows |trend| slowly up and faster down, ignores outliers
        m = abs(modified)
        if self.last_threshold_ms < 0:
            self.last_threshold_ms = now_ms
        if m <= th + 15.0:
            k = self.K_DOWN if m < th else self.K_UP
            dt = min(now_ms - self.last_threshold_ms, 100.0)
            th += k * (m - th) * dt
            self.threshold = 6.0 if th < 6.0 else 600.0 if th > 600.0 else th
        self.last_threshold_ms = now_ms
        return self.state


_USAGE = {NORMAL: BandwidthUsage.NORMAL, OVERUSING: BandwidthUsage.OVERUSING, UNDERUSING: BandwidthUsage.UNDERUSING}


@dataclass
class ProbeResult:
    bitrate: float
    sent: int
    received: int


class BandwidthEstimator:
    def __init__(self, now: float, start_bps: int = START_BPS) -> None:
        self._trend = Trendline()
        self._rate = AimdRateControl()
        self._rate.set_estimate(start_bps, int(now * 1000))
        # the packet group being filled: first/last send time, last arrival; and the last
        # complete group's last send/arrival (deltas are between groups' last packets)
        self._g_first = -1.0
        self._g_send = 0.0
        self._g_arrival = 0.0
        self._prev_send = -1.0
        self._prev_arrival = 0.0
        self._last_cut = 0.0
        self._fresh_groups = FRESH_GROUPS  # packet groups sent since the last cut
        self.delay_bps = float(start_bps)
        self.loss_bps = float(start_bps)
        self.remb_bps: Optional[float] = None
        self.mode = "none"  # "twcc" or "remb" once feedback arrives
        self.loss = 0.0  # loss fraction of what was sent, last 0.5 s
        self._loss_window: deque = deque()
        self._loss_time = now
        self._last_loss_decrease = 0.0
        self.last_decrease = 0.0
        self.overusing = False
        self.acked_bps = 0.0
        self.acked_recent_bps = 0.0  # over ACKED_RECENT_S: what a loss cut starts from
        self.probe_window = (0.0, -1.0)  # send times of the current/last probe cluster (+ tail)
        self.probed = False
        # what the bottleneck delivered when a probe saturated it (0: unknown). The pacer
        # never sends faster than 0.95 of it, so a keyframe waits in the pacer, not in the
        # link's queue (where GCC reads it as over-use); nor can the estimate exceed that
        # (with the pacer capped, delay could no longer show an allocation too big). A probe
        # that gets through above it clears it: the link changed.
        self.capacity_bps = 0.0
        self._capacity_at = 0.0
        self._acked: deque = deque()  # (arrival, size) over the last second
        self._acked_sum = 0

    # ---------------------------------------------------------------- inputs

    def on_twcc(self, packets: list[tuple[float, int, Optional[float]]], now: float) -> None:
        """packets: (send time s, size bytes, arrival time s on receiver clock or None)."""
        self.on_feedback(packets, now)

    def on_feedback(self, packets, now: float) -> None:
        """One transport-cc feedback: (send time s, size bytes, arrival s or None) in
        transport seq order. One pass: loss, acked bytes, and packet groups for the trendline."""
        self.mode = "twcc"
        lost = 0
        got = 0
        p0, p1 = self.probe_window
        acked = self._acked
        acked_bytes = 0
        trend = self._trend
        g_first, g_send, g_arrival = self._g_first, self._g_send, self._g_arrival
        state = trend.state
        for send, size, arrival in packets:
            if p0 <= send <= p1:
                # a probe fills the bottleneck queue on purpose: neither loss nor delay, and
                # no delay delta across it either (the groups on both sides start afresh)
                g_first = -1.0
                self._prev_send = -1.0
                continue
            if arrival is None:
                lost += 1
                continue
            got += 1
            acked_bytes += size
            if send - g_first > GROUP_S:
                # a new group: the one just completed gives a delta against the one before
                if g_first >= 0:
                    ps = self._prev_send
                    if ps >= 0 and g_arrival >= self._prev_arrival:
                        state = trend.update(
                            (g_arrival - self._prev_arrival) * 1000.0, (g_send - ps) * 1000.0, g_arrival * 1000.0
                        )
                    self._prev_send, self._prev_arrival = g_send, g_arrival
                    if g_send > self._last_cut:
                        self._fresh_groups += 1
                g_first = g_send = send
                g_arrival = arrival
            else:
                g_send = send  # transport seq order is send order
                if arrival > g_arrival:
                    g_arrival = arrival
        self._g_first, self._g_send, self._g_arrival = g_first, g_send, g_arrival
        if got:
            acked.append((g_arrival if g_arrival > self._prev_arrival else self._prev_arrival, acked_bytes))
            self._acked_sum += acked_bytes
            while g_arrival - acked[0][0] > 1.0:
                self._acked_sum -= acked.popleft()[1]
            span = g_arrival - acked[0][0]
            if span > 0.2:
                self.acked_bps = (self._acked_sum - acked[0][1]) * 8 / span
            # the same over the last half second, for loss cuts: when a link shrinks under
            # what it is sent, a second's average still holds the old rate, and cuts from it
            # came down in steps (720p -> 360p -> 180p, 3-5 s to settle at 800 kbit/s)
            recent, first = 0, None
            for arrival, size in reversed(acked):
                if g_arrival - arrival > ACKED_RECENT_S:
                    break
                recent += size
                first = (arrival, size)
            if first is not None and g_arrival - first[0] > 0.2:
                self.acked_recent_bps = (recent - first[1]) * 8 / (g_arrival - first[0])
        if state == OVERUSING and not self.overusing and logger.isEnabledFor(logging.DEBUG):
            # what the verdict was read from: the smoothed delay over the trendline's window
            t = self._trend
            logger.debug(
                "over-use: trend %.4f threshold %.1f acked %.0f estimate %.0f; smoothed delay (ms) by arrival: %s",
                t.trend, t.threshold, self.acked_bps, self.estimate,
                " ".join(f"{x - t.points[0][0]:.0f}:{y:.1f}" for x, y in t.points),
            )
        self.overusing = state == OVERUSING
        self._update_rate(state, now)
        if got + lost:
            self._update_loss(lost / (got + lost), got + lost, now)

    def _update_rate(self, state: int, now: float) -> None:
        """AIMD once per feedback: cut to 0.85 x the acked rate on over-use (at most every
        DECREASE_MIN_S, never upward), hold on under-use, else grow (x1.08/s, or additively
        near the link's last known capacity), never past 1.5 x the acked rate."""
        acked = int(self.acked_bps) if self.acked_bps > 0 else None
        before = self.delay_bps
        if self.capacity_bps and now - self._capacity_at > CAPACITY_TTL_S:
            self.capacity_bps = 0.0  # not measured again for minutes: let GCC find out
        if state == OVERUSING:
            if acked is None:
                return  # nothing measured yet to cut relative to
            if (now - self._last_cut < DECREASE_MIN_S or self._fresh_groups < FRESH_GROUPS) and (
                acked is None or acked > 0.5 * before
            ):
                return
            self._last_cut = now
            self._fresh_groups = 0
        if state == OVERUSING and acked < APP_LIMITED * before:
            # over-use while sending well below the estimate comes from a burst (a keyframe, a
            # probe's tail), not from the rate: one step down, not a collapse to the acked rate
            # (libwebrtc would cut to it and count on ALR probes to recover)
            acked = int(before)
        result = self._rate.update(_USAGE[state], acked, int(now * 1000))
        if result is None:
            return
        if result <= 0:  # aiortc's rate control can run off after a jump: restart from the acked rate
            self._reset_rate(max(MIN_BPS, self.acked_bps or self.loss_bps), now)
            return
        if state == OVERUSING and result > before:
            result = int(before)
            self._rate.current_bitrate = result
        self.delay_bps = float(result)
        if self.delay_bps < before * 0.97:
            self.last_decrease = now

    def on_remb(self, bitrate: float, now: float, congested: bool) -> None:
        """A receive-side estimate follows what it receives (x1.08/s, at most 1.5x the
        incoming rate) and drops to 0.85x on over-use; the transport has already turned the
        REMBs into a link figure and says whether any of them showed over-use."""
        if self.mode == "twcc":
            return
        self.mode = "remb"
        if congested:
            self.last_decrease = now
        self.remb_bps = float(bitrate)

    def on_receiver_loss(self, fraction: float, now: float) -> None:
        """Loss from an RR block (only used without transport-cc: RR loss includes the
        publisher's uplink gaps, which are not this link's fault)."""
        if self.mode != "twcc":
            self._update_loss(fraction, 50, now)

    def _reset_rate(self, bps: float, now: float) -> None:
        self._rate = AimdRateControl()
        self._rate.set_estimate(int(bps), int(now * 1000))
        self.delay_bps = float(bps)

    def on_probe(
        self, result: ProbeResult, now: float, reached: bool = True, saturated: bool = False, capacity: float = 0.0
    ) -> None:
        """A probe that got through measured the link: take its rate if higher. One that
        saturated the link (it came out of the bottleneck's queue slower than it was sent)
        measured the link's capacity: take it, higher or lower (libwebrtc sets its delay-based
        estimate to a probe's result either way). Without the lower case an estimate left
        high by a cut from 2 Mbit/s drifted up further while 200 kbit/s of media (app-limited:
        no queue, no over-use) could not show it wrong, and every probe into the 300 kbit/s
        cap said 290 kbit/s to no effect; then a 360p upgrade overflowed the link."""
        self.probed = True
        rate = result.bitrate
        if capacity:
            self.capacity_bps = capacity  # the rate it came out of the bottleneck's queue
            self._capacity_at = now
        elif reached and rate > CAPACITY_CLEAR * self.capacity_bps:
            self.capacity_bps = 0.0  # got through clearly above it: the link changed
        elif reached and rate > self.capacity_bps:
            # through at about the capacity (792 against a measured 774 kbit/s, a cluster the
            # cap did not slow by 3 %): that is the limit measured again, not a lifted one.
            # Forgetting it let AIMD take the estimate to 935 kbit/s, the pacer followed, and
            # the link's queue overflowed (13 % loss, two freezes at 800 kbit/s)
            self.capacity_bps = rate
            self._capacity_at = now
        lower = saturated and rate < self.estimate
        if not lower and not ((reached or saturated) and rate > self.estimate):
            return
        pick = min if lower else max
        self._rate.set_estimate(int(rate), int(now * 1000))
        self.delay_bps = rate
        self.loss_bps = pick(self.loss_bps, rate)
        if self.remb_bps is not None:
            self.remb_bps = pick(self.remb_bps, rate)
        if lower:
            self.last_decrease = now

    # ---------------------------------------------------------------- loss-based control

    def _update_loss(self, fraction: float, packets: int, now: float) -> None:
        # loss over the last half second of reports: responsive, yet not one packet's verdict
        self._loss_window.append((now, fraction * packets, packets))
        while self._loss_window and now - self._loss_window[0][0] > 0.5:
            self._loss_window.popleft()
        total = sum(p for _, _, p in self._loss_window)
        if total >= 20:
            self.loss = sum(lost for _, lost, _ in self._loss_window) / total
        dt = min(1.0, max(0.0, now - self._loss_time))
        self._loss_time = now
        if self.loss < LOSS_LOW:
            # follow the delay estimate upward at GCC's pace; never run far ahead of it
            ceiling = self.delay_bps if self.mode == "twcc" else max(self.delay_bps, self.remb_bps or 0.0)
            self.loss_bps = min(self.loss_bps * math.pow(1.08, dt) + 1000 * dt, max(ceiling, self.loss_bps))
        elif self.loss > LOSS_HIGH and total >= 20 and now - self._last_loss_decrease > 0.3:
            # cut relative to what actually got through, not to the previous estimate:
            # repeated cuts of the estimate over one loss episode would overshoot downward
            base = self.acked_recent_bps or self.acked_bps or self.loss_bps
            self.loss_bps = max(MIN_BPS, min(self.loss_bps, base * (1 - 0.5 * self.loss)))
            self._last_loss_decrease = now
            self.last_decrease = now
            # the next cut only on loss reported after this one: the window still holds the
            # loss that caused it, and a second cut from it, taken from the lower rate sent
            # since, overshot (2 Mbit/s: the stage went to 180p and back to 360p)
            self._loss_window.clear()

    # ---------------------------------------------------------------- output

    @property
    def estimate(self) -> float:
        e = min(self.delay_bps, self.loss_bps)
        if self.mode == "remb" and self.remb_bps is not None:
            e = min(self.remb_bps, self.loss_bps)
        if self.capacity_bps and e > CAPACITY_SHARE * self.capacity_bps:
            e = CAPACITY_SHARE * self.capacity_bps
        return max(MIN_BPS, min(MAX_BPS, e))

    @property
    def verified(self) -> bool:
        """True once the link has shown a limit (a decrease) or a probe measured it."""
        return self.last_decrease > 0 or self.probed

    def stable(self, now: float, for_s: float = 1.5) -> bool:
        """No over-use, little loss, no recent decrease: the moment to ask for more."""
        return not self.overusing and self.loss < LOSS_LOW and now - self.last_decrease > for_s
