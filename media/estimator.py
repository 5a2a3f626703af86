"""Bandwidth estimation toward one subscriber (the SFU -> site downlink).

Two signals, the better one when the site offers it:
- transport-cc (browsers): per-packet send and arrival times. The delay-based part is GCC:
  aiortc's RemoteBitrateEstimator (inter-arrival grouping, Kalman filter on the delay
  gradient, adaptive over-use threshold, AIMD rate control) fed with our send times and
  the receiver's arrival times, i.e. run send-side. Loss comes from the same feedback, so
  it counts only packets the SFU sent (a publisher's own uplink loss does not lower every
  subscriber's estimate).
- REMB + receiver reports (clients without transport-cc): the receiver's own estimate,
  capped by a loss-based estimate from RR fraction lost.

Probing (see `ProbeResult`) is how an estimate climbs faster than GCC's 8 %/s: the
allocator sends padding/RTX at a target rate, and if the feedback shows it all arrived at
that rate, the estimate jumps there.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Optional

from aiortc.rate import BandwidthUsage, RemoteBitrateEstimator

START_BPS = 300_000  # unverified until probed: start low, probe at once
MIN_BPS = 60_000
MAX_BPS = 30_000_000
LOSS_LOW = 0.02
LOSS_HIGH = 0.10


@dataclass
class ProbeResult:
    bitrate: float
    sent: int
    received: int


class BandwidthEstimator:
    def __init__(self, now: float, start_bps: int = START_BPS) -> None:
        self._gcc = RemoteBitrateEstimator()
        self._gcc.rate_control.set_estimate(start_bps, int(now * 1000))
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
        self.probe_window = (0.0, -1.0)  # send times of the current/last probe cluster (+ tail)
        self.probed = False
        self._acked: deque = deque()  # (arrival, size) over the last second
        self._acked_sum = 0

    # ---------------------------------------------------------------- inputs

    def on_twcc(self, packets: list[tuple[float, int, Optional[float]]], now: float) -> None:
        """packets: (send time s, size bytes, arrival time s on receiver clock or None)."""
        self.mode = "twcc"
        lost = 0
        got = 0
        before = self.delay_bps
        p0, p1 = self.probe_window
        acked = self._acked
        g_send = None
        g_size = 0
        g_last_send = g_last_arrival = 0.0
        for send, size, arrival in packets:
            probing = p0 <= send <= p1
            if arrival is None:
                if not probing:  # a probe is meant to find the queue's edge: its loss is expected
                    lost += 1
                continue
            if probing:
                continue  # a probe fills the bottleneck queue on purpose: not congestion
            got += 1
            acked.append((arrival, size))
            self._acked_sum += size
            # GCC compares packet *groups* sent within 5 ms (a frame's burst); feeding it one
            # entry per group instead of per packet gives it the same deltas at a fraction
            # of the Python cost
            if g_send is not None and send - g_send > 0.005:
                self._feed_gcc(g_last_arrival, g_last_send, g_size, now)
                g_send = None
            if g_send is None:
                g_send, g_size = send, 0
            g_size += size
            g_last_send, g_last_arrival = send, arrival
        if g_send is not None:
            self._feed_gcc(g_last_arrival, g_last_send, g_size, now)
        self.overusing = self._gcc.detector.state() == BandwidthUsage.OVERUSING
        if self.delay_bps < before * 0.97:
            self.last_decrease = now
        if acked:
            newest = acked[-1][0]
            while newest - acked[0][0] > 1.0:
                self._acked_sum -= acked.popleft()[1]
            span = newest - acked[0][0]
            if span > 0.2:
                self.acked_bps = self._acked_sum * 8 / span
        if got + lost:
            self._update_loss(lost / (got + lost), got + lost, now)

    def _feed_gcc(self, arrival: float, send: float, size: int, now: float) -> None:
        result = self._gcc.add(int(arrival * 1000), int(send * 262144) & 0xFFFFFF, size, 0)
        if result is not None:
            if result[0] > 0:
                self.delay_bps = float(result[0])
            else:  # aiortc's rate control can run off after a jump; restart it from the acked rate
                self._reset_gcc(max(MIN_BPS, self.acked_bps or self.loss_bps), now)

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

    def _reset_gcc(self, bps: float, now: float) -> None:
        self._gcc = RemoteBitrateEstimator()
        self._gcc.rate_control.set_estimate(int(bps), int(now * 1000))
        self.delay_bps = float(bps)

    def on_probe(self, result: ProbeResult, now: float, reached: bool = True) -> None:
        """A probe that reached its target measured the link: take its rate if higher. One
        that fell short only says the link is near that rate; a short cluster through a
        token bucket even overstates it (the bucket's burst), so it never raises the estimate."""
        self.probed = True
        if reached and result.bitrate > self.estimate:
            self._gcc.rate_control.set_estimate(int(result.bitrate), int(now * 1000))
            self.delay_bps = result.bitrate
            self.loss_bps = max(self.loss_bps, result.bitrate)
            if self.remb_bps is not None:
                self.remb_bps = max(self.remb_bps, result.bitrate)

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
        elif self.loss > LOSS_HIGH and now - self._last_loss_decrease > 0.3:
            # cut relative to what actually got through, not to the previous estimate:
            # repeated cuts of the estimate over one loss episode would overshoot downward
            base = self.acked_bps if self.acked_bps > 0 else self.loss_bps
            self.loss_bps = max(MIN_BPS, min(self.loss_bps, base * (1 - 0.5 * self.loss)))
            self._last_loss_decrease = now
            self.last_decrease = now

    # ---------------------------------------------------------------- output

    @property
    def estimate(self) -> float:
        e = min(self.delay_bps, self.loss_bps)
        if self.mode == "remb" and self.remb_bps is not None:
            e = min(self.remb_bps, self.loss_bps)
        return max(MIN_BPS, min(MAX_BPS, e))

    @property
    def verified(self) -> bool:
        """True once the link has shown a limit (a decrease) or a probe measured it."""
        return self.last_decrease > 0 or self.probed

    def stable(self, now: float, for_s: float = 1.5) -> bool:
        """No over-use, little loss, no recent decrease: the moment to ask for more."""
        return not self.overusing and self.loss < LOSS_LOW and now - self.last_decrease > for_s
