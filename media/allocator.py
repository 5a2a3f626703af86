"""Per-subscriber stream allocation: which simulcast layer each video slot gets.

Given the downlink estimate of one site, the allocator walks that site's video slots in
priority order (slot 0 holds the floor, or the hub, then the rest in the Router's order):
audio is reserved first and never starved; every slot gets the lowest layer if it fits,
else it is paused (its page says so); then the stage (slot 0) climbs to the top layer and
thumbnails stay at the lowest. Downgrades apply at once; upgrades need the estimate to
clear the next allocation by a margin for a hold time, so a steady link does not flap.

When what the site should get exceeds the estimate and the link is calm, the prober sends
a short cluster of retransmitted (or padding) packets at a higher rate; if the transport-cc
feedback shows it all arrived at that rate, the estimate jumps there (see estimator.py).
That is what brings a site back from the lowest layer or from audio-only within seconds.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Optional

from .estimator import LOSS_HIGH, ProbeResult

if TYPE_CHECKING:
    from .consumer import Consumer
    from .producer import RecvStream
    from .transport import WebRtcTransport

NOMINAL_BPS = (150_000, 500_000, 1_500_000)  # per layer, until measured
AUDIO_MIN_BPS = 32_000  # per audio slot in use, until measured
UPGRADE_MARGIN = 1.15
UPGRADE_HOLD_S = 1.5
PROBE_INTERVAL_S = 2.0
PROBE_MAX_INTERVAL_S = 4.0  # a lifted cap is found within this (the 10 s climb-back target)
PROBE_DURATION_S = 0.1  # short: on a link that cannot take the step, a probe costs loss
PROBE_TICK_S = 0.01
THUMBNAIL_MAX_LAYER = 0


def layer_rate(stream: "RecvStream", layer: int) -> float:
    """What forwarding this layer costs: its recent peak rate plus 10 %, or a nominal rate
    while it is not flowing (e.g. paused at the publisher because nobody received it)."""
    nominal = NOMINAL_BPS[min(layer, len(NOMINAL_BPS) - 1)]
    if stream.ssrc is not None and stream.bitrate_peak > 0 and time.monotonic() - stream.last_packet < 1.0:
        return max(stream.bitrate_peak * 1.1, nominal * 0.25)
    return nominal


class StreamAllocator:
    def __init__(self, transport: "WebRtcTransport") -> None:
        self.transport = transport
        self.upgrade_since = 0.0
        self.switches = 0
        self.last_run = 0.0
        self.desired_bps = 0.0
        self.allocated_bps = 0.0
        self.deficient = False
        # probing
        self.last_probe = 0.0
        self.probe_wait = PROBE_INTERVAL_S
        self.probe: Optional[dict] = None
        self.probes = 0
        self.probe_successes = 0
        self.last_probe_result: Optional[tuple] = None
        self.next_step_bps = 0.0
        self.ceiling = 0.0  # received rate of the last failed probe (0: none)
        self.audio_bps = 0.0
        # Cap set by the hub's EgressBudget (media/budget.py) while the server's own uplink
        # is short: slot -> highest layer allowed (-1: paused); None: no cap.
        self.limits: Optional[dict["Consumer", int]] = None

    # ---------------------------------------------------------------- allocation

    def _plan(
        self, budget: float, consumers: list["Consumer"], keep: float = 1.0, limits: Optional[dict["Consumer", int]] = None
    ) -> dict["Consumer", int]:
        """`keep` < 1 lets a slot that is playing stay on its lowest layer with a slightly
        short budget: pausing and resuming around one threshold would flap. `limits` (the
        egress budget's caps) bound each slot's layer; a slot not in them is paused."""
        plan: dict["Consumer", int] = {}
        for c in consumers:
            p = c.producer
            if p is None:
                continue
            if limits is not None and limits.get(c, -1) < 0:
                plan[c] = -1
                continue
            r = layer_rate(p.streams[0], 0)
            need = r * keep if not c.paused and not c.fresh else r
            if budget >= need or keep == 0.0:
                plan[c] = 0
                budget -= r  # charged in full: a kept layer leaves nothing for upgrades
            else:
                plan[c] = -1
        for c in consumers:  # slot order = priority: the stage climbs first
            p = c.producer
            if p is None or plan.get(c, -1) < 0:
                continue
            top = len(p.streams) - 1 if c.index == 0 else min(THUMBNAIL_MAX_LAYER, len(p.streams) - 1)
            if limits is not None:
                top = min(top, limits.get(c, -1))
            layer = plan[c]
            while layer < top:
                extra = layer_rate(p.streams[layer + 1], layer + 1) - layer_rate(p.streams[layer], layer)
                if extra > budget:
                    break
                budget -= extra
                layer += 1
            plan[c] = layer
        return plan

    def _cost(self, plan: dict["Consumer", int]) -> float:
        total = 0.0
        for c, layer in plan.items():
            p = c.producer
            if p is not None and layer >= 0:
                total += layer_rate(p.streams[layer], layer)
        return total

    def run(self, now: Optional[float] = None) -> None:
        t = self.transport
        now = time.monotonic() if now is None else now
        self.last_run = now
        consumers = [c for c in t.consumers["video"] if c.producer is not None]
        audio = 0.0  # audio is served first, always: reserve what it measurably uses
        for c in t.consumers["audio"]:
            p = c.producer
            if p is not None:
                audio += max(AUDIO_MIN_BPS, 1.2 * max(s.bitrate_peak for s in p.streams))
        self.audio_bps = audio
        estimate = t.estimator.estimate
        budget = max(0.0, estimate - audio)
        # a site that sends no feedback at all cannot be adapted to: never pause it
        # and before the link has shown any limit, the start estimate is a guess: it may keep
        # a stream on its lowest layer but never pause it
        # and a playing slot is paused only when loss shows its lowest layer really does not
        # fit: a delay-based dip alone (a busy host, a jittery path) must not blank a picture
        unproven = t.estimator.mode == "none" or not t.estimator.verified
        lossy = t.estimator.loss > LOSS_HIGH or (t.estimator.mode == "remb" and t.estimator.remb_bps is not None)
        limits = self.limits
        down = self._plan(budget, consumers, keep=0.0 if unproven or not lossy else 0.8, limits=limits)
        up = self._plan(budget / UPGRADE_MARGIN, consumers, limits=limits)
        wanted = self._plan(float("inf"), consumers)
        self.desired_bps = self._cost(wanted) + audio  # what the egress budget sees asked for
        # beyond this point "ideal" is what the budget allows: no probing for the rest
        ideal = self._plan(float("inf"), consumers, limits=limits) if limits is not None else wanted
        self.deficient = any(down.get(c, -1) < ideal.get(c, -1) for c in consumers)
        # what one more step costs for the first slot that wants more (the probe aims there)
        self.next_step_bps = 0.0
        for c in consumers:
            have, want = down.get(c, -1), ideal.get(c, -1)
            if have < want and c.producer is not None:
                streams = c.producer.streams
                nxt = have + 1
                self.next_step_bps = layer_rate(streams[nxt], nxt) - (layer_rate(streams[have], have) if have >= 0 else 0.0)
                break
        upgrade = False
        for c in consumers:
            current = c.layer if not c.paused else -1
            if c.fresh or down[c] < current:
                self._apply(c, down[c], "congestion" if down[c] < ideal[c] else "budget" if down[c] < wanted[c] else "ok")
                c.fresh = False
            elif up[c] > current:
                upgrade = True
        if upgrade:
            if not self.upgrade_since:
                self.upgrade_since = now
            elif now - self.upgrade_since >= UPGRADE_HOLD_S and t.estimator.stable(now, 0.5):
                for c in consumers:
                    current = c.layer if not c.paused else -1
                    if up[c] > current:
                        self._apply(c, up[c], "congestion" if up[c] < ideal[c] else "budget" if up[c] < wanted[c] else "ok")
                self.upgrade_since = 0.0
        else:
            self.upgrade_since = 0.0
        self.allocated_bps = self._cost({c: (c.layer if not c.paused else -1) for c in consumers})
        # pace at the estimate, but never below what was just decided to be sent (a stream
        # kept on its only layer over an unproven estimate must not queue up in the pacer)
        t.set_pacing(max(estimate, self.allocated_bps + audio) if t.estimator.mode != "none" else 0.0)
        if self.allocated_bps + audio > estimate:
            self.deficient = True  # kept over budget: probing is how the estimate catches up
        self._maybe_probe(now)

    def _apply(self, c: "Consumer", layer: int, reason: str) -> None:
        p = c.producer
        if p is None:
            return
        c.reason = reason
        if layer < 0:
            if not c.paused:
                c.pause()
                self.switches += 1
            return
        stream = p.streams[min(layer, len(p.streams) - 1)]
        if c.paused or c.layer != layer:
            self.switches += 1
        c.select(stream, drop_current=reason == "congestion" and 0 <= layer < c.layer)

    # ---------------------------------------------------------------- probing

    def _maybe_probe(self, now: float) -> None:
        t = self.transport
        est = t.estimator
        if self.probe is not None and now - self.probe["start"] > 3.0:
            self.probe = None  # its feedback never came (lost, or the site went quiet)
        if self.probe is not None or est.mode != "twcc" or not self.deficient:
            return
        if now - self.last_probe < self.probe_wait or not est.stable(now, 1.0):
            return
        # aim at the next layer step with the upgrade's margin on top (LiveKit's rule of
        # thumb): a probe far past the link's capacity only costs loss on a weak link
        # aim at what the next layer step needs, with the upgrade's margin and 10 % more
        # (LiveKit's rule of thumb); resuming a paused slot probes for just its lowest layer
        needed = self.allocated_bps + self.audio_bps + self.next_step_bps
        target = max(needed * UPGRADE_MARGIN * 1.1, est.estimate * 1.1)
        if self.ceiling:
            # the last probe failed at about this rate: probe 10 % above it, so a link that
            # is still capped loses nothing, and a lifted cap is still found (then climb)
            target = min(target, max(self.ceiling, est.estimate) * 1.1)
        if target <= est.estimate * 1.05:
            return
        self.last_probe = now
        self.probes += 1
        self.probe = {"target": target, "start": now, "first": None, "last": None, "sent": 0, "ticks": 0}
        est.probe_window = (now, now + PROBE_DURATION_S + 0.15)
        asyncio.get_running_loop().call_soon(self._probe_tick)

    def _probe_tick(self) -> None:
        pr = self.probe
        t = self.transport
        if pr is None or t.closed:
            return
        now = time.monotonic()
        elapsed = now - pr["start"]
        # bytes that should have gone out by now at the target rate, minus media already sent
        media_bps = t.send_rate(now)
        want = max(0.0, (pr["target"] - media_bps) * min(elapsed + PROBE_TICK_S, PROBE_DURATION_S) / 8) - pr["sent"]
        while want > 0:
            seq, size = t.send_probe_packet(now)
            if seq is None:
                break
            if pr["first"] is None:
                pr["first"] = seq
            pr["last"] = seq
            pr["sent"] += size
            want -= size
        pr["ticks"] += 1
        if elapsed + PROBE_TICK_S < PROBE_DURATION_S:
            asyncio.get_running_loop().call_later(PROBE_TICK_S, self._probe_tick)
        else:
            pr["end_seq"] = t.twcc_history.seq
            pr["done"] = now

    def on_feedback(self, results: list[tuple[int, float, int, Optional[float]]], now: float) -> None:
        """results: (seq, send time, size, arrival or None). Scores a finished probe."""
        pr = self.probe
        if pr is None:
            return
        if now - pr["start"] > 3.0:
            self.probe = None
            return
        first = pr["first"]
        if first is None:
            if "done" in pr:
                self.probe = None
            return
        cluster = pr.setdefault("results", {})
        end = pr.get("end_seq", self.transport.twcc_history.seq)
        for seq, send, size, arrival in results:
            if ((seq - first) & 0xFFFF) < ((end - first) & 0xFFFF):
                cluster[seq] = (send, size, arrival)
        if "done" not in pr:
            return
        expected = (end - first) & 0xFFFF
        if len(cluster) < expected and now - pr["done"] < 1.0:
            return
        self.probe = None
        got = [(s, z, a) for s, z, a in cluster.values() if a is not None]
        if len(got) < max(5, 0.8 * expected):
            self.last_probe_result = ("lost", expected, len(got))
            self.ceiling = self.transport.estimator.estimate * 1.1
            self.probe_wait = min(PROBE_MAX_INTERVAL_S, self.probe_wait * 1.5)
            return
        got.sort()
        send_span = got[-1][0] - got[0][0]
        arrivals = sorted(a for _, _, a in got)
        recv_span = arrivals[-1] - arrivals[0]
        if send_span <= 0.05 or recv_span <= 0.05:
            return
        send_rate = sum(z for _, z, _ in got[:-1]) * 8 / send_span
        recv_rate = sum(z for _, z, _ in got[1:]) * 8 / recv_span
        rate = min(send_rate, recv_rate) if recv_rate >= 0.9 * send_rate else 0.95 * recv_rate
        reached = rate >= 0.9 * pr["target"]
        self.transport.estimator.on_probe(ProbeResult(rate, expected, len(got)), now, reached)
        self.last_probe_result = (round(rate), round(pr["target"]), expected, len(got))
        if reached:
            self.ceiling = 0.0
            self.probe_successes += 1
            self.probe_wait = 0.5  # still short of what the site should get: probe again soon
            self.upgrade_since = now - UPGRADE_HOLD_S  # the probe was the proof: upgrade now
        else:
            self.ceiling = rate
            self.probe_wait = min(PROBE_MAX_INTERVAL_S, self.probe_wait * 1.5)
