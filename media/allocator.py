"""Per-subscriber stream allocation: which simulcast layer each video slot gets.

Given the downlink estimate of one site, the allocator walks that site's video slots in
priority order (slot 0 holds the floor, or the hub, then the rest in the Router's order):
audio is reserved first and never starved; every slot gets the lowest step if it fits,
else it is paused (its page says so); then every slot climbs to its lowest spatial layer
at full frame rate, then the stage (slot 0) climbs to the top; thumbnails stay at 180p.

A step is (spatial layer, temporal id): Chrome sends every simulcast layer as VP8 L1T3, so
each layer also comes at 1/4 and 1/2 of its frame rate for ~40 % and ~60 % of its bit
rate (the shares are measured per stream). Dropping temporal layers needs no keyframe:
a downgrade within a layer is immediate, and a spatial downgrade first thins the current
layer to its base temporal layer while the lower layer's keyframe is on its way. Those
steps are also what lets a cap between two spatial layers be filled (LiveKit and
mediasoup allocate over the same spatial x temporal grid).

Downgrades apply at once; upgrades need the estimate to clear the next allocation by a
margin for a hold time, so a steady link does not flap; after an upgrade that had to be
undone within seconds, the hold doubles (up to UPGRADE_BACKOFF_MAX_S).

When what the site should get exceeds the estimate and the link is calm, the prober sends
a short cluster of retransmitted (or padding) packets at a higher rate; if the transport-cc
feedback shows it all arrived at that rate, the estimate jumps there (see estimator.py).
That is what brings a site back from the lowest layer or from audio-only within seconds.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import TYPE_CHECKING, Optional

from .estimator import CAPACITY_SHARE, LOSS_HIGH, LOSS_LOW, ProbeResult
from .rtp import WIRE_UDP_IP

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from .consumer import Consumer
    from .producer import RecvStream
    from .transport import WebRtcTransport

NOMINAL_BPS = (150_000, 500_000, 1_500_000)  # per layer, until measured
LAYER_STEP_RATIO = 2.5  # a paused simulcast layer costs at least this x the flowing one below (Chrome: ~3 x a step)
AUDIO_MIN_BPS = 32_000  # per audio slot in use, until measured
UPGRADE_MARGIN = 1.1
PEAK_MARGIN = 1.03  # on top of a layer's measured peak (the pacer and the link's queue take the rest)
MEAN_MARGIN = 1.1  # on top of a layer's average (_Room: a set of slots)
UPGRADE_HOLD_S = 1.5
QUICK_UPGRADE_HOLD_S = 0.3  # after a probe found far more than is sent (a lifted cap, a start)
QUICK_UPGRADE_WINDOW_S = 3.0
NEAR_LIMIT_S = 60.0  # a decrease this recent means the link's limit is near (10 s: a 5 Mbit/s
# link used at 60 % went back to 2.5 x pacing 10 s after each cut, and the next frames'
# bursts made the next cut; the stage switched 4-12 times a minute)
SPATIAL_UPGRADE_EXTRA = 0.25  # headroom a new spatial layer needs near the link's limit (keyframe burst)
UPGRADE_BACKOFF_MAX_S = 20.0  # the longest hold after failed upgrades (a lifted cap resets it)
FAILED_UPGRADE_S = 15.0  # a congestion downgrade this soon after an upgrade means the upgrade failed
DOWNGRADE_GRACE_S = 1.0  # a delay-only dip below what is sent must last this long
PRICE_GRACE_S = 3.0  # ... and a price over a steady budget, under a pacer bounded by a measured capacity,
PRICE_BACKLOG_S = 0.15  # once the pacer holds this much (before that, the price is only a price)
PROBE_INTERVAL_S = 2.0
PROBE_MAX_INTERVAL_S = 2.0  # a lifted cap is found within this (the 10 s climb-back target; with 3 s,
# one ceiling probe that fell 2 % short of showing a lifted 800 kbit/s cap cost 3 s of a 10.5 s climb)
PROBE_DURATION_S = 0.1  # short: on a link that cannot take the step, a probe costs loss
PROBE_TICK_S = 0.01
CEILING_PROBE = 1.25  # a probe after a failed one aims this far above the rate it failed at
CEILING_CLEAR = 1.1  # and must be received at least this far above it to count
CAPACITY_SLOWED = 0.97  # a complete probe received below this share of its send rate measured the link
THUMBNAIL_MAX_LAYER = 0
STAGE_PREFERRED_LAYER = 1  # the stage gets up to this layer before thumbnails are admitted
BACKLOG_THIN_S = 0.3  # a spatial downgrade thins the old layer only behind less pacer backlog
PACER_CONGESTED_S = 0.5  # a pacer backlog this long (or a packet it dropped) is congestion too
PACER_RELIEF = 0.85  # ... and the slots are planned for this share of the pacer's rate
ALL_TIDS = 3  # "every temporal layer" (VP8 TIDs are 2 bits)
ALL_LAYERS = 99  # "no spatial bound" for _climb
Step = tuple[int, int]  # (spatial layer, highest temporal id); (-1, -1): paused
PAUSED: Step = (-1, -1)


def _flowing(stream: "RecvStream", now: float) -> bool:
    return stream.ssrc is not None and stream.bitrate_peak > 0 and now - stream.last_packet < 1.0


def layer_rate(stream: "RecvStream", layer: int) -> float:
    """What forwarding this layer costs on the wire: its recent peak rate (0.5 s windows,
    decaying: it already holds the keyframes); while it is not flowing (paused at the
    publisher because nobody took it) the peak it had when it last flowed, else a nominal
    rate, and never less than LAYER_STEP_RATIO x the peak of the layer below it if that one
    flows. The peak it last had can be far too low: a browser that sent a layer only for the
    few seconds its encoder was ramping up leaves a 360p layer "known" at 250 kbit/s, and a
    receiver capped at 400 kbit/s was switched to it and back (tests/browser/test_simulcast.py
    saw a 640x360 frame there in about one run in four)."""
    nominal = NOMINAL_BPS[min(layer, len(NOMINAL_BPS) - 1)]
    now = time.monotonic()
    if _flowing(stream, now):
        return max(stream.bitrate_peak * PEAK_MARGIN, nominal * 0.25)
    rate = max(stream.bitrate_known * PEAK_MARGIN, nominal * 0.5) if stream.bitrate_known > 0 else nominal
    streams = stream.producer.streams
    if 0 < layer <= len(streams) - 1 and streams[layer] is stream:
        below = streams[layer - 1]
        if _flowing(below, now):
            rate = max(rate, below.bitrate_peak * PEAK_MARGIN * LAYER_STEP_RATIO)
    return rate


def step_rate(stream: "RecvStream", step: Step) -> float:
    """What forwarding temporal ids 0..step[1] of this layer costs."""
    rate = layer_rate(stream, step[0])
    if step[1] < ALL_TIDS and stream.temporal_layers > 1:
        rate *= stream.tl_share[step[1]]
    return rate


def step_mean(stream: "RecvStream", step: Step, peak: float) -> float:
    """What the step costs on average (~2 s, with a margin), at most its peak price; the
    peak price where there is no average of a flowing layer to go by."""
    if stream.ssrc is None or stream.bitrate_mean <= 0 or time.monotonic() - stream.last_packet >= 1.0:
        return peak
    rate = stream.bitrate_mean * MEAN_MARGIN
    if step[1] < ALL_TIDS and stream.temporal_layers > 1:
        rate *= stream.tl_share[step[1]]
    return min(peak, rate)


class _Room:
    """What is left of a budget as slots take steps. A set of slots is charged the sum of
    their average rates plus the largest single burst above average among them: each slot's
    peak is its keyframe's half second, and the keyframes of independent publishers rarely
    coincide. Summing nine peaks (~5 Mbit/s) took a 720p stage away on a link that carried the
    meeting's 2.8 Mbit/s average with room to spare, and gave it back seconds later (12
    switches a minute); charging averages alone let a keyframe overflow a 2 Mbit/s link. With
    one slot this is its peak, as before."""

    __slots__ = ("free", "reserve")

    def __init__(self, budget: float) -> None:
        self.free = budget
        self.reserve = 0.0  # the largest burst above average among the steps taken

    def extra(self, mean_from: float, mean_to: float, excess_to: float) -> float:
        return mean_to - mean_from + max(0.0, excess_to - self.reserve)

    def take(self, mean_from: float, mean_to: float, excess_to: float) -> None:
        self.free -= self.extra(mean_from, mean_to, excess_to)
        self.reserve = max(self.reserve, excess_to)


def ladder(streams: list["RecvStream"], top: int) -> list[tuple[Step, float, float]]:
    """The steps of layers 0..top from the lowest, with their cost (peak, average); a step
    that costs no more than the one below it is left out (an upgrade that buys nothing)."""
    out: list[tuple[Step, float, float]] = []
    for layer in range(min(top, len(streams) - 1) + 1):
        s = streams[layer]
        # above the lowest layer only the full frame rate is a resting step: a sharper
        # picture at half rate sits too close to what a weak link carries (a keyframe
        # burst then overflows its queue) and looks worse than the smaller one at full rate.
        # Reduced rates are used on the lowest layer (instead of pausing) and, briefly, to
        # thin the old layer while a downgrade waits for the lower layer's keyframe.
        low = 0 if layer == 0 else s.temporal_layers - 1
        tids = list(range(low, s.temporal_layers - 1)) + [ALL_TIDS]
        for tid in tids:
            step = (layer, tid)
            rate = step_rate(s, step)
            if not out or rate > out[-1][1]:
                out.append((step, rate, step_mean(s, step, rate)))
    return out


def _climb(steps: list[tuple[Step, float, float]], i: int, room: _Room, max_layer: int) -> int:
    """Step up a slot's ladder from step i while the next step's extra cost fits in the room
    and its spatial layer is at most max_layer: the step reached."""
    while i + 1 < len(steps) and steps[i + 1][0][0] <= max_layer:
        _, peak, mean = steps[i + 1]
        extra = room.extra(steps[i][2], mean, peak - mean)
        if extra > room.free:
            break
        room.take(steps[i][2], mean, peak - mean)
        i += 1
    return i


class StreamAllocator:
    def __init__(self, transport: "WebRtcTransport") -> None:
        self.transport = transport
        self.upgrade_since = 0.0
        self.upgraded_at = 0.0  # when the last upgrade was applied
        self.hold_s = UPGRADE_HOLD_S  # grows after failed upgrades
        self.hold_until = 0.0
        self.failed_bps = 0.0  # what was being sent when an upgrade failed (0: none lately)
        self.budget = 0.0
        self.short_since = 0.0  # since when the estimate has been short of what is sent
        self.short_estimate = 0.0  # the estimate then
        self.verified_at = 0.0  # when a probe last checked a delay-only dip (see _maybe_probe)
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
        self.ceiling_passes = 0  # ceiling probes in a row that got through (see on_feedback)
        # exponential probing (libwebrtc's "probe further"): at the start, and after a probe
        # that found more than the last known limit, the next probe doubles the estimate
        # instead of aiming one layer step up, so a fresh or freed link is found in ~2 s
        self.probe_grow = True
        self.ideal_bps = 0.0
        self.quick_until = 0.0  # until then an upgrade needs only QUICK_UPGRADE_HOLD_S
        self._backlog_s = 0.0
        self._pace_dropped_seen = 0
        self.pacer_congested = False
        self.audio_bps = 0.0
        self.link_capacity = 0.0  # the last capacity a probe measured (0: none since the link changed)
        self.changed_at = 0.0  # when a probe last got through clearly above a measured capacity
        # Cap set by the hub's EgressBudget (media/budget.py) while the server's own uplink
        # is short: slot -> highest layer allowed (-1: paused); None: no cap.
        self.limits: Optional[dict["Consumer", int]] = None

    # ---------------------------------------------------------------- allocation

    def _plan(
        self, budget: float, consumers: list["Consumer"], keep: float = 1.0, limits: Optional[dict["Consumer", int]] = None,
        now_at: Optional[dict["Consumer", Step]] = None, at_least: Optional[dict["Consumer", Step]] = None,
    ) -> dict["Consumer", Step]:
        """`keep` < 1 lets a slot that is playing stay on its lowest step with a slightly
        short budget: pausing and resuming around one threshold would flap. `limits` (the
        egress budget's caps) bound each slot's spatial layer; a slot not in them is paused.
        `now_at` (the plan a downgrade is taken from) bounds each slot listed to the spatial
        layer it is on, and keeps a paused one paused: the stage's climb to its preferred
        layer is for admissions, and in a downgrade's plan it took the room of the
        thumbnails playing (at 800 kbit/s a congested pacer paused all seven, and the stage
        was not raised either: a plan is applied only where it is lower). `at_least` (the
        plan an upgrade is taken from) keeps each slot listed on at least the step it is on:
        an upgrade is applied only where the plan is higher, so a plan that took the stage
        down a temporal layer to admit a thumbnail admitted the thumbnail beside the stage as
        it was (361 kbit/s of slots on a 300 kbit/s link, paused again 50 ms later). The
        slots kept are charged first: taken in slot order, a paused slot ahead of a playing
        one was admitted into room the playing one then took (268 kbit/s planned for 206)."""
        plan: dict["Consumer", Step] = {}
        ladders: dict["Consumer", list[tuple[Step, float, float]]] = {}
        at: dict["Consumer", int] = {}
        room = _Room(budget)
        if at_least is not None:
            consumers = sorted(consumers, key=lambda c: not (c in at_least and at_least[c][0] >= 0))
        for c in consumers:
            p = c.producer
            if p is None:
                continue
            if limits is not None and limits.get(c, -1) < 0:
                plan[c] = PAUSED
                continue
            top = len(p.streams) - 1 if c.index == 0 else min(THUMBNAIL_MAX_LAYER, len(p.streams) - 1)
            if limits is not None:
                top = min(top, limits.get(c, -1))
            if now_at is not None and c in now_at:
                if now_at[c][0] < 0:
                    plan[c] = PAUSED
                    continue
                top = min(top, now_at[c][0])
            steps = ladders[c] = ladder(p.streams, top)
            floored = at_least is not None and c in at_least and at_least[c][0] >= 0
            first = max((i for i, (st, _, _) in enumerate(steps) if st <= at_least[c]), default=0) if floored else 0
            _, peak, mean = steps[first]
            r = room.extra(0.0, mean, peak - mean)
            need = r * keep if not c.paused and not c.fresh else r
            if floored or room.free >= need or keep == 0.0:
                at[c] = first
                room.take(0.0, mean, peak - mean)  # charged in full: a kept step leaves nothing for upgrades
                if c.index == 0:
                    # the stage (floor/hub) climbs to its preferred layer (360p at full frame
                    # rate, Jitsi's "preferred" for the on-stage source) before any thumbnail
                    # is admitted: on a tight link a thumbnail is paused rather than the picture
                    # everyone watches shown at 5 fps, or at 180p beside six thumbnails
                    at[c] = _climb(steps, first, room, STAGE_PREFERRED_LAYER)
            else:
                plan[c] = PAUSED
        # every slot to its lowest layer at full frame rate, then the stage climbs first
        # (slot order = priority)
        for max_layer in (0, ALL_LAYERS):
            for c, i in at.items():
                at[c] = _climb(ladders[c], i, room, max_layer)
        for c, i in at.items():
            plan[c] = ladders[c][i][0]
        return plan

    @staticmethod
    def _price(c: "Consumer", step: Step) -> str:
        """A step's peak/mean price in kbit/s, for the debug log."""
        p = c.producer
        if p is None or step[0] < 0:
            return "-"
        stream = p.streams[min(step[0], len(p.streams) - 1)]
        peak = step_rate(stream, step)
        return f"{peak / 1000:.0f}/{step_mean(stream, step, peak) / 1000:.0f}k"

    def _cost(self, plan: dict["Consumer", Step]) -> float:
        """What these steps cost together, priced as _Room prices them."""
        room = _Room(0.0)
        for c, step in plan.items():
            p = c.producer
            if p is not None and step[0] >= 0:
                stream = p.streams[min(step[0], len(p.streams) - 1)]
                peak = step_rate(stream, step)
                mean = step_mean(stream, step, peak)
                room.take(0.0, mean, peak - mean)
        return -room.free

    def near_limit(self, now: float) -> bool:
        """The link's limit was met lately: a decrease in the last NEAR_LIMIT_S, and none of it
        before a probe showed the link changed (got through clearly above its capacity)."""
        last = self.transport.estimator.last_decrease
        return now - last < NEAR_LIMIT_S and last > self.changed_at

    @staticmethod
    def current(c: "Consumer") -> Step:
        return (c.layer, c.temporal) if not c.paused and c.layer >= 0 else PAUSED

    def run(self, now: Optional[float] = None) -> None:
        t = self.transport
        now = time.monotonic() if now is None else now
        self.last_run = now
        consumers = [c for c in t.consumers["video"] if c.producer is not None]
        audio = 0.0  # audio is served first, always: reserve what it measurably uses
        for c in t.consumers["audio"]:
            p = c.producer
            if p is not None:
                audio += max(AUDIO_MIN_BPS, 1.1 * max(s.bitrate_peak for s in p.streams))
        self.audio_bps = audio
        estimate = t.estimator.estimate
        budget = max(0.0, estimate - audio)
        # the pacer's own congestion: what the slots send does not fit the rate the pacer
        # may use (bounded by a measured capacity, it keeps the link itself under its limit,
        # so neither delay nor loss ever shows it: the queue sat at its 1 s cap and dropped
        # 5,000 packets at 2 Mbit/s, 17 freezes). A backlog over PACER_CONGESTED_S, or a
        # packet the pacer dropped since the last run, plans at once for a share of what
        # the pacer delivers, so its queue drains; it counts as loss (what the pacer drops
        # never reaches the site), so a slot may be paused for it.
        rate_bps = t._pace_rate * 8
        backlog_s = t.pace_backlog_s()
        dropped = t.pace_dropped - self._pace_dropped_seen
        self._pace_dropped_seen = t.pace_dropped
        # (only where the pacer is held under a measured capacity: pacing freely, at 2.5 x an
        # estimate, a backlog is a keyframe at a start estimate, and a link that is really
        # short shows itself to GCC; taking it for congestion there froze a site at join)
        self.pacer_congested = (
            bool(rate_bps) and bool(t.estimator.capacity_bps) and (backlog_s > PACER_CONGESTED_S or dropped > 0)
        )
        if self.pacer_congested:
            budget = min(budget, max(0.0, PACER_RELIEF * rate_bps - audio))
        # a site that sends no feedback at all cannot be adapted to: never pause it
        # and before the link has shown any limit, the start estimate is a guess: it may keep
        # a stream on its lowest layer but never pause it
        # and a playing slot is paused only when loss shows its lowest layer really does not
        # fit: a delay-based dip alone (a busy host, a jittery path) must not blank a picture
        unproven = t.estimator.mode == "none" or not t.estimator.verified
        lossy = (
            t.estimator.loss > LOSS_HIGH
            or (t.estimator.mode == "remb" and t.estimator.remb_bps is not None)
            or self.pacer_congested
        )
        limits = self.limits
        kept = {c: self.current(c) for c in consumers if not c.fresh}
        down = self._plan(budget, consumers, keep=0.0 if unproven or not lossy else 0.8, limits=limits, now_at=kept)
        up = self._plan(budget / UPGRADE_MARGIN, consumers, limits=limits, at_least=kept)
        new_layers = {c: up[c] for c in consumers if up[c][0] > self.current(c)[0] >= 0}
        near_limit = self.near_limit(now)
        repeats_failure = bool(self.failed_bps) and self._cost(up) + audio >= 0.95 * self.failed_bps
        if new_layers and (repeats_failure or (near_limit and self._cost(up) + SPATIAL_UPGRADE_EXTRA * self._cost(new_layers) > budget)):
            # a new spatial layer starts with a keyframe burst: it needs more headroom than a
            # temporal step; short of it, climb only within the layers being sent. Nor is an
            # allocation that already failed tried again (until a probe finds clearly more,
            # or 30 s pass without trouble): each try is two switches and a GCC cut
            same = {c: max(0, self.current(c)[0]) for c in consumers}
            if limits is not None:
                same = {c: min(v, limits.get(c, -1)) for c, v in same.items()}
            up = self._plan(budget / UPGRADE_MARGIN, consumers, limits=same, at_least=kept)
        wanted = self._plan(float("inf"), consumers)
        self.desired_bps = self._cost(wanted) + audio  # what the egress budget sees asked for
        # beyond this point "ideal" is what the budget allows: no probing for the rest
        ideal = self._plan(float("inf"), consumers, limits=limits) if limits is not None else wanted
        # short of the ideal by the upgrade's rule, not by the bare estimate: an estimate that
        # just covers the next layer but not its margin must still be probed past, or the
        # slot would wait below it for good (the estimate cannot grow past 1.5x what is sent)
        self.deficient = any(up.get(c, PAUSED) < ideal.get(c, PAUSED) for c in consumers)
        self.ideal_bps = self._cost(ideal) + audio
        self.budget = budget
        # what one more step costs for the first slot that wants more (the probe aims there)
        self.next_step_bps = 0.0
        for c in consumers:
            have, want = up.get(c, PAUSED), ideal.get(c, PAUSED)
            if have < want and c.producer is not None:
                streams = c.producer.streams
                steps = ladder(streams, want[0])
                above = [r for st, r, _ in steps if st > have]
                if above:
                    below = step_rate(streams[have[0]], have) if have[0] >= 0 else 0.0
                    self.next_step_bps = max(0.0, above[0] - below)
                break
        upgrade = False
        downgraded = False
        # a downgrade is at once when the link shows loss or the estimate fell far; a
        # delay-based dip alone (a keyframe burst, a busy host) must last DOWNGRADE_GRACE_S:
        # GCC's over-use signal flickers, and each flicker would be a visible switch
        est = t.estimator
        short = any(down[c] < self.current(c) for c in consumers if not c.fresh)
        if not short:
            self.short_since = 0.0
        elif not self.short_since:
            self.short_since = now
            self.short_estimate = estimate
        # what the pacer still holds, in seconds at the rate it is about to get: a queue built
        # at the old rate can be seconds long at the new one
        pace_factor = t.PACE_FACTOR if near_limit else t.PACE_FACTOR_FREE
        self._backlog_s = t.pace_queued_bytes() * 8 / max(1.0, estimate * pace_factor)
        # (a longer grace for a dip of one GCC cut, 3 s above 0.8 of what is sent, was tried:
        # 720p behind 2 Mbit/s then built a pacer queue that dropped 670 packets, 5 freezes)
        urgent = (
            est.loss >= LOSS_LOW
            or self.pacer_congested
            or estimate < 0.75 * (self.allocated_bps + audio)
            or now - self.short_since >= self._grace(now)
        )
        if urgent and short and logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "downgrade %s: %s; what is sent costs %.0f, budget %.0f besides audio (loss %.3f, pacer congested %s, short %.1f s)",
                t.participant_id,
                ", ".join(
                    f"slot {c.index} {self.current(c)} ({self._price(c, self.current(c))}) -> {down[c]}"
                    for c in consumers if down[c] < self.current(c)
                ),
                self._cost({c: self.current(c) for c in consumers}), budget, est.loss, self.pacer_congested,
                now - self.short_since,
            )
        for c in consumers:
            current = self.current(c)
            if c.fresh or (down[c] < current and urgent):
                reason = "congestion" if down[c] < ideal[c] else "budget" if down[c] < wanted[c] else "ok"
                if not c.fresh and reason == "congestion":
                    downgraded = True
                self._apply(c, down[c], reason)
                c.fresh = False
            elif up[c] > current:
                upgrade = True
        if downgraded:
            # an upgrade undone within seconds was a mistake: wait longer before the next
            if self.upgraded_at and now - self.upgraded_at < FAILED_UPGRADE_S:
                self.hold_s = min(UPGRADE_BACKOFF_MAX_S, self.hold_s * 2)
                self.failed_bps = max(self.failed_bps, self.allocated_bps + audio)  # what did not fit
            self.hold_until = now + self.hold_s
            self.upgraded_at = 0.0
        elif self.hold_s > UPGRADE_HOLD_S and now - self.hold_until > 30.0:
            self.hold_s = UPGRADE_HOLD_S  # 30 s without trouble: forgive
            self.failed_bps = 0.0
        if upgrade:
            if not self.upgrade_since:
                self.upgrade_since = now
            elif (
                now - self.upgrade_since >= (QUICK_UPGRADE_HOLD_S if now < self.quick_until else UPGRADE_HOLD_S)
                and now >= self.hold_until
                and t.estimator.stable(now, 0.5)
            ):
                if logger.isEnabledFor(logging.DEBUG):
                    logger.debug(
                        "upgrade %s: %s; the plan costs %.0f, budget %.0f (/%.2f) besides audio %.0f",
                        t.participant_id,
                        ", ".join(
                            f"slot {c.index} {self.current(c)} -> {up[c]} ({self._price(c, up[c])})"
                            for c in consumers if up[c] > self.current(c)
                        ) + "; kept: " + ", ".join(
                            f"slot {c.index} {up[c]} ({self._price(c, up[c])})" for c in consumers if up[c] == self.current(c)
                        ),
                        self._cost(up), budget, UPGRADE_MARGIN, audio,
                    )
                for c in consumers:
                    if up[c] > self.current(c):
                        self._apply(c, up[c], "congestion" if up[c] < ideal[c] else "budget" if up[c] < wanted[c] else "ok")
                self.upgrade_since = 0.0
                self.upgraded_at = now
        else:
            self.upgrade_since = 0.0
        for c in consumers:
            if c.target is not None:
                # a switch waiting for its keyframe: a request refused by the publisher-wide
                # throttle (another layer asked a moment before) or lost on the way is asked
                # again here; the stream's own throttle keeps this to one per second
                c.target.request_keyframe(now)
        self.allocated_bps = self._cost({c: self.current(c) for c in consumers})
        # pace at the estimate, but never below what was just decided to be sent (a stream
        # kept on its only layer over an unproven estimate must not queue up in the pacer)
        base = max(estimate, self.allocated_bps + audio)
        # ... and never faster than the link was measured to deliver: at 2.5 x, a 720p
        # keyframe went into a 5 Mbit/s link at 12, queued there, read as over-use, and the
        # cut took the stage down to 360p every 10-20 s with the link 60 % used
        # ... not even for what was decided: slots priced before a keyframe raised their peaks
        # (two thumbnails admitted at 300 kbit/s) paced the link at 376 kbit/s, its queue
        # overflowed, and the loss cut the stage to 5 fps for 11 s; held here instead, the
        # backlog is the pacer's congestion, which re-plans the slots at once without loss
        capacity = t.estimator.capacity_bps * CAPACITY_SHARE
        if capacity:
            base = min(base, capacity)
            pace_factor = min(pace_factor, max(1.0, capacity / base))
        t.set_pacing(base if t.estimator.mode != "none" else 0.0, pace_factor)
        if self.allocated_bps + audio > estimate:
            self.deficient = True  # kept over budget: probing is how the estimate catches up
        self._maybe_probe(now)

    def _grace(self, now: float) -> float:
        """How long the slots may cost more than the budget before a downgrade, without loss.
        A dip of the estimate is given DOWNGRADE_GRACE_S. A price that rose over a budget that
        did not move (no decrease, no over-use, no loss lately), where the pacer keeps to a
        measured capacity, is a keyframe's peak, priced for ~2 s after it (the half-second
        peak decays by 0.85 a window): the pacer holds its burst, and if the slots really do
        not fit, its backlog says so at once (pacer_congested). Downgraded after a second,
        the 300 kbit/s stage dropped to 10 fps at a keyframe and counted it a failed upgrade.
        (The estimate's own decreases cannot tell: a probe that measures the cap again
        lowers it by a hair every 3 s.) And while that pacer keeps up (under PRICE_BACKLOG_S
        of backlog), what it holds is the measurement, and the price is only a price: Chrome's
        180p at full rate, priced at 227-242 kbit/s by its half-second peaks, went out with
        the audio at 256-273 kbit/s through a pacer at 281 with nothing queued, and after
        the grace the 300 kbit/s stage dropped to 10 fps all the same."""
        est = self.transport.estimator
        steady = est.estimate >= 0.97 * self.short_estimate and not est.overusing and est.loss < LOSS_LOW
        if est.capacity_bps and steady:
            return math.inf if self.transport.pace_backlog_s() < PRICE_BACKLOG_S else PRICE_GRACE_S
        return DOWNGRADE_GRACE_S

    def _apply(self, c: "Consumer", step: Step, reason: str) -> None:
        p = c.producer
        if p is None:
            return
        c.reason = reason
        layer, tid = step
        if layer < 0:
            if not c.paused:
                c.pause()
                self.switches += 1
            return
        stream = p.streams[min(layer, len(p.streams) - 1)]
        if c.paused or self.current(c) != step:
            self.switches += 1
        thin = drop = False
        if reason == "congestion" and 0 <= layer < c.layer and c.source is not None:
            # until the lower layer's keyframe: the current one at its base temporal layer
            # if that fits next to it, else nothing (the link cannot carry it)
            # ... and only if the pacer's backlog is short: behind seconds of the old layer
            # queued at the old rate, thinning would keep the link drowned; dropping takes that
            # backlog back (Consumer._unsend_queued) and the lower layer's keyframe goes next
            thin = step_rate(c.source, (c.source.layer, 0)) <= self.budget and self._backlog_s < BACKLOG_THIN_S
            drop = not thin
        c.select(stream, drop_current=drop, tid=tid, thin_current=thin)

    # ---------------------------------------------------------------- probing

    def _maybe_probe(self, now: float) -> None:
        t = self.transport
        est = t.estimator
        if self.probe is not None and now - self.probe["start"] > 3.0:
            self.probe = None  # its feedback never came (lost, or the site went quiet)
        if self.probe is not None or est.mode != "twcc" or not self.deficient:
            return
        # A dip below what is sent, from delay alone, on a link whose capacity no probe has
        # measured, is checked at once (0.2 s after the cut, once per dip) with a cluster at
        # what is sent plus the upgrade's margin: a burst queued by pacing at 2.5 x an estimate
        # that is only a lower bound reads as over-use, and the cut to 0.85 of the received
        # rate went under the 720p stage on a 5 Mbit/s link whose meeting needed 3; a second
        # later the stage was on 360p for 4-5 s. Through, the probe restores the estimate
        # before the grace is out; slowed, it measures the link, and the downgrade stands.
        sent = self.allocated_bps + self.audio_bps
        verify = (
            self.short_since > self.verified_at
            and est.estimate < sent
            and not est.capacity_bps
            and est.loss < LOSS_LOW
            and not self.pacer_congested
            and now - est.last_decrease >= 0.2
        )
        if not verify and (now - self.last_probe < self.probe_wait or not est.stable(now, 1.0)):
            return
        # aim at what the next layer step needs, with the upgrade's margin and 10 % more
        # (LiveKit's rule of thumb); resuming a paused slot probes for just its lowest layer
        needed = self.allocated_bps + self.audio_bps + self.next_step_bps
        target = max(needed * UPGRADE_MARGIN * 1.1, est.estimate * 1.1)
        at_ceiling = 0.0
        if verify:
            self.verified_at = now
            target = sent * UPGRADE_MARGIN
        elif self.ceiling:
            # the last probe failed at about this rate: probe a quarter above it, which a
            # still-capped link's queue absorbs (25 ms of it) and a lifted cap shows clearly.
            # Above the capacity measured, not the estimate (0.95 of it): from the estimate,
            # "10 % above" was 4.5 % above an 800 kbit/s cap, and a cluster sent unevenly
            # passed twice in a row; the exponential probe that followed lost 3 packets and
            # froze the stage for 0.55 s
            at_ceiling = max(self.ceiling, est.estimate, est.capacity_bps)
            target = at_ceiling * CEILING_PROBE
        elif self.probe_grow and est.last_decrease <= self.last_probe:
            # nothing has shown a limit since the last probe got through: double, up to what
            # every slot at its ideal layer needs (with the upgrade's margin)
            target = max(target, min(est.estimate * 2.0, self.ideal_bps * UPGRADE_MARGIN * 1.1))
        if target <= est.estimate * 1.05:
            return
        self.last_probe = now
        self.probes += 1
        self.probe = {"target": target, "start": now, "first": None, "last": None, "sent": 0, "ticks": 0, "ceiling": at_ceiling,
                      "wire0": t.bytes_out + WIRE_UDP_IP * t.packets_out}
        est.probe_window = (now, now + PROBE_DURATION_S + 0.15)
        asyncio.get_running_loop().call_soon(self._probe_tick)

    def _probe_tick(self) -> None:
        pr = self.probe
        t = self.transport
        if pr is None or t.closed:
            return
        now = time.monotonic()
        elapsed = now - pr["start"]
        # bytes that should have gone out by now at the target rate, less all that did since
        # the start, media included (taken from the last second's send rate, the media share
        # was often wrong for the probe's 100 ms: clusters aimed at 351 kbit/s went out at
        # 210-280, too little to show a lifted cap, and the climb back waited 3 s a miss)
        wire = t.bytes_out + WIRE_UDP_IP * t.packets_out - pr["wire0"]
        want = pr["target"] * min(elapsed + PROBE_TICK_S, PROBE_DURATION_S) / 8 - wire
        while want > 0:
            seq, size = t.send_probe_packet(now, max(want, 300.0))
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
            self.ceiling_passes = 0
            self._back_off()
            return
        got.sort()
        # rates over the last two thirds of the cluster (by send time) only: a token bucket
        # passes its burst at once, which would make the first packets look like capacity
        tail = got[len(got) // 3 :]
        send_span = tail[-1][0] - tail[0][0]
        by_arrival = sorted(tail, key=lambda g: g[2])
        recv_span = by_arrival[-1][2] - by_arrival[0][2]
        if send_span <= 0.03 or recv_span <= 0.03:
            return
        # libwebrtc's rates: all but the last packet sent over the send span, all but the
        # first received over the receive span. The second is a lower bound on the link's
        # rate (through a FIFO, each arrival is at least its own size after the one before)
        # and exactly the rate of a link the cluster kept busy.
        send_rate = sum(z for _, z, _ in tail[:-1]) * 8 / send_span
        recv_rate = sum(z for _, z, _ in by_arrival[1:]) * 8 / recv_span
        # Whether the link slowed the cluster is read from its spans (the same packets at both
        # ends), not from those two rates, which leave out a different packet each: at 300
        # kbit/s a tail is 6-8 packets of 150-1200 bytes, and clusters through a lifted cap,
        # spans equal, read 276 kbit/s sent and 183 received ("saturated": the estimate was
        # cut to 173 kbit/s on an open link; the climb back took 15.8 s)
        ratio = send_span / recv_span  # < 1: the link spread the cluster out
        rate = min(send_rate, recv_rate) if ratio >= 0.9 else 0.95 * recv_rate
        # reached: the link kept up with what the cluster really sent (media around it makes
        # that differ from the target), and that was most of the target
        reached = ratio >= 0.9 and rate >= 0.75 * pr["target"]
        complete = len(got) >= 0.95 * expected
        if pr["ceiling"]:
            # A ceiling probe that gets through is a hint that the cap lifted, not a
            # measurement: through a token bucket's queue a probe a little over the limit still
            # "arrives" near it, and with 6-20 packets of mixed sizes each rate is off by up
            # to a packet (taken as a measurement, 14 packets through a 300 kbit/s cap read
            # 362 kbit/s with equal spans, and the estimate went over the cap). It must be
            # sent clearly above the last failure (read over the whole cluster: at 300 kbit/s
            # a 1200-byte copy is 3 of the probe's 10 ms ticks, and a tail without the big ones
            # read 275-290 of a 352 kbit/s cluster), received so too (the tail with half its
            # first and last packet: its rate after the first arrival, a FIFO's lower bound,
            # read 259 of an open link when that arrival was a 1200-byte copy), nothing lost,
            # and twice in a row, 0.5 s apart (after one, an 800 kbit/s cap took the
            # exponential probe that follows, lost a stage packet and froze it 1.1 s). Then
            # the ceiling goes and that probe, exponential and larger, measures.
            span_all = got[-1][0] - got[0][0]
            sent_all = sum(z for _, z, _ in got[:-1]) * 8 / span_all if span_all > 0 else 0.0
            even_recv = (sum(z for _, z, _ in tail) - (by_arrival[0][1] + by_arrival[-1][1]) / 2) * 8 / recv_span
            through = min(sent_all, even_recv)
            if complete and through >= CEILING_CLEAR * pr["ceiling"]:
                self.ceiling_passes += 1
                self.probe_wait = 0.5
                self.last_probe_result = ("hint", round(through), round(pr["target"]), self.ceiling_passes)
                logger.debug("probe %s: ceiling %.0f gone? %.0f through (%d in a row)",
                             self.transport.participant_id, pr["ceiling"], through, self.ceiling_passes)
                if self.ceiling_passes >= 2:
                    self.ceiling = 0.0
                    self.ceiling_passes = 0
                    self.probe_grow = True
                return
            self.ceiling_passes = 0
            reached = False
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "probe %s: target %.0f sent %.0f recv %.0f (%d of %d packets, %.0f bytes over %.3f s sent, %.3f s received) "
                "ceiling %.0f est %.0f reached %s",
                self.transport.participant_id, pr["target"], send_rate, recv_rate, len(got), expected,
                sum(z for _, z, _ in got), send_span, recv_span, pr["ceiling"], self.transport.estimator.estimate, reached,
            )
        # whatever the verdict on the link's change, a cluster that (nearly) all arrived says the
        # link carried `rate`; through a saturated link that is 0.95 of what came out of its
        # queue, which is its capacity, higher or lower than the estimate (libwebrtc sets its
        # estimate to a probe's result so). Without this an estimate could sit at 0.75 of a
        # capped link while every ceiling probe measured 0.9 of it (the layer that fits stayed
        # out of reach), or drift above it while the media sent was too little to show it.
        saturated = complete and ratio < 0.9 and not reached
        # the link's capacity, for the pacer: any complete cluster the link slowed, even a
        # little (5.2 Mbit/s into a 5 Mbit/s cap comes out at 4.98: "reached", yet the cap)
        capacity = recv_rate if complete and ratio < CAPACITY_SLOWED else 0.0
        # what the link was last measured at (the estimator forgets its bound as soon as a
        # probe gets through above it, even by 10 %; this is kept until the link is seen to change)
        measured = self.transport.estimator.capacity_bps or self.link_capacity
        self.link_capacity = capacity or measured
        self.transport.estimator.on_probe(ProbeResult(rate, expected, len(got)), now, reached or complete, saturated, capacity)
        self.last_probe_result = (round(rate), round(pr["target"]), expected, len(got))
        if not reached and pr["ceiling"]:
            self._back_off()  # the ceiling stands
            return
        if reached:
            self.ceiling = 0.0
            self.probe_grow = True
            self.probe_successes += 1
            self.probe_wait = 0.5  # still short of what the site should get: probe again soon
            # the link changed (a cap lifted) if the probe found clearly more than what last
            # failed; with no failure lately, far more than what is sent. (Against what is sent
            # alone, any probe from 180p looked like a lifted cap, the caution learnt from a
            # failed 360p was forgotten at once, and 800 kbit/s switched 9 times a minute.)
            changed = rate > 1.25 * self.failed_bps if self.failed_bps else rate > 1.5 * (self.allocated_bps + self.audio_bps)
            # ... or clearly above the capacity a probe measured: what "failed" may be the whole
            # meeting that was flowing when the cap came (an upgrade 15 s before it counts as
            # failed), so a lifted 800 kbit/s cap had to show 3.6 Mbit/s before the caution
            # went, and the climb back took 10.6-13.8 s; 1.25 x a measured capacity cannot
            # come through a link that still has it
            above_capacity = bool(measured and rate > 1.25 * measured)
            if above_capacity:
                # the limit that was met is gone: the decreases it caused no longer say the
                # link is near its limit (the climb after a lifted 800 kbit/s cap waited 4 s
                # for 720p on the headroom a spatial step needs near one, at 1.5 s a step)
                self.changed_at = now
            changed = changed or above_capacity
            if changed:
                self.link_capacity = 0.0
                # far more than what was sent, or than what an upgrade failed at: the link has
                # changed (a cap lifted), so the caution learnt from failed upgrades is void
                self.hold_s = UPGRADE_HOLD_S
                self.hold_until = 0.0
                self.failed_bps = 0.0
                # a cluster that arrived at 1.5x what is sent is no token bucket's burst
                # (its tail is read at the bucket's rate): the next upgrade need not wait out
                # the full hold, which would only add seconds to every step of a climb
                if not self.near_limit(now):
                    # and only away from a limit met lately: near one, the keyframe burst of
                    # a quick spatial step is what overflows the link's queue
                    self.quick_until = now + QUICK_UPGRADE_WINDOW_S
            # otherwise no quick upgrade on a probe alone: a short cluster through a token
            # bucket overstates the link by the bucket's burst; the raised estimate must hold
        else:
            self.ceiling = rate
            self.ceiling_passes = 0
            self._back_off()

    def _back_off(self) -> None:
        """A probe did not get through: wait longer for the next, and step, not double."""
        self.probe_grow = False
        self.probe_wait = min(PROBE_MAX_INTERVAL_S, self.probe_wait * 1.5)
