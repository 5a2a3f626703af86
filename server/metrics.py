"""Prometheus `/metrics`: read at scrape time from the live rooms, never on the packet path.

The forwarding core keeps plain integer counters on its transports; this collector walks
them when Prometheus asks (every 15 s or so), so metrics cost nothing per packet. Labels are
per meeting, not per site: 164 sites x several series each would swamp a small Prometheus;
per-site figures are in the hub console instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, Optional

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.process_collector import ProcessCollector

from media.timing import FORWARD_DELAY, LATENCY_BOUNDS_S, add_counts

if TYPE_CHECKING:
    from signaling.service import SignalingService

ESTIMATE_BUCKETS = [100e3, 300e3, 500e3, 1e6, 2e6, 5e6, 10e6]


class RoomCollector:
    def __init__(self, signaling: "SignalingService") -> None:
        self.signaling = signaling

    def collect(self) -> Iterator:
        participants = GaugeMetricFamily("hoinghi_participants", "Participants connected", labels=["meeting"])
        streams = GaugeMetricFamily("hoinghi_streams", "Forwarded streams", labels=["meeting", "direction", "kind"])
        packets = CounterMetricFamily("hoinghi_packets", "RTP/RTCP packets", labels=["meeting", "direction"])
        octets = CounterMetricFamily("hoinghi_bytes", "Bytes on the wire (SRTP)", labels=["meeting", "direction"])
        dropped = CounterMetricFamily("hoinghi_dropped_packets", "Received packets dropped (bad SRTP/RTP)", labels=["meeting"])
        lost = CounterMetricFamily("hoinghi_upstream_lost_packets", "Packets never recovered from publishers", labels=["meeting"])
        nacks = CounterMetricFamily("hoinghi_nacks_sent", "Sequence numbers NACKed upstream", labels=["meeting"])
        retx = CounterMetricFamily("hoinghi_retransmissions", "RTX packets sent to subscribers", labels=["meeting"])
        retx_refused = CounterMetricFamily(
            "hoinghi_retransmissions_refused", "NACKed packets not resent: the site's pacer held too much (congestion)", labels=["meeting"]
        )
        pacer_dropped = CounterMetricFamily(
            "hoinghi_pacer_dropped_packets", "Packets a site's pacer dropped (its queue was full: the link is short)", labels=["meeting"]
        )
        switches = CounterMetricFamily("hoinghi_layer_switches", "Video slots switched to another simulcast layer or site (at a keyframe)", labels=["meeting"])
        audio_switches = CounterMetricFamily("hoinghi_audio_switches", "Audio slots switched to another site (loudest-K)", labels=["meeting"])
        speaker_changes = CounterMetricFamily("hoinghi_speaker_changes", "Dominant speaker changes (each moves the stage of every receiver)", labels=["meeting"])
        paused = GaugeMetricFamily("hoinghi_paused_video_slots", "Video slots paused for lack of bandwidth", labels=["meeting"])
        rooms = GaugeMetricFamily("hoinghi_rooms", "Live meetings")
        egress = GaugeMetricFamily("hoinghi_egress_bps", "The server's media uplink budget (bit/s): capacity (0 = unlimited), sent, demand, planned", labels=["what"])
        egress_limited = GaugeMetricFamily("hoinghi_egress_limited_receivers", "Receivers whose layers the uplink budget lowers")
        connections = GaugeMetricFamily("hoinghi_signaling_connections", "Open signaling WebSockets")
        estimates: list[float] = []
        waited: list[int] = []
        wait_s = 0.0
        sent = 0
        sig = self.signaling
        rooms.add_metric([], len(sig.rooms))
        connections.add_metric([], len(sig.sessions))
        budget = getattr(sig, "egress", None)
        if budget is not None:
            snap = budget.snapshot()
            for what in ("capacity", "sent", "demand", "planned"):
                egress.add_metric([what], snap[f"{what}_bps"])
            egress_limited.add_metric([], snap["limited_receivers"])
        for mid, room in sig.rooms.items():
            tot = room.router.totals()
            participants.add_metric([mid], len(room.sessions))
            for kind in ("audio", "video"):
                streams.add_metric([mid, "in", kind], tot[f"streams_in_{kind}"])
                streams.add_metric([mid, "out", kind], tot[f"streams_out_{kind}"])
            packets.add_metric([mid, "in"], tot["packets_in"])
            packets.add_metric([mid, "out"], tot["packets_out"])
            octets.add_metric([mid, "in"], tot["bytes_in"])
            octets.add_metric([mid, "out"], tot["bytes_out"])
            dropped.add_metric([mid], tot["dropped"])
            lost.add_metric([mid], tot["lost"])
            nacks.add_metric([mid], tot["nacks"])
            retx.add_metric([mid], tot["retransmissions"])
            retx_refused.add_metric([mid], tot.get("retransmissions_refused", 0))
            pacer_dropped.add_metric([mid], tot.get("pacer_dropped", 0))
            switches.add_metric([mid], tot["switches"])
            audio_switches.add_metric([mid], tot.get("audio_switches", 0))
            detector = getattr(room.router, "speakers", None)
            if detector is not None:
                speaker_changes.add_metric([mid], detector.changes)
            paused.add_metric([mid], tot["paused"])
            estimates.extend(tot["estimates"])
            add_counts(waited, tot.get("pace_waited") or [])
            wait_s += tot.get("pace_wait_s", 0.0)
            sent += tot["packets_out"]
        buckets = []
        for bound in ESTIMATE_BUCKETS:
            buckets.append((f"{bound:g}", sum(1 for e in estimates if e <= bound)))
        buckets.append(("+Inf", len(estimates)))
        estimate = HistogramMetricFamily(
            "hoinghi_downlink_estimate_bps", "Per-site downlink bandwidth estimates", buckets=buckets, sum_value=sum(estimates)
        )
        # every packet sent: those that never queued in a pacer waited 0 (first bucket)
        yield _histogram("hoinghi_pacer_wait_seconds", "Time sent RTP packets waited in the per-site pacers",
                         waited, max(0, sent - sum(waited)), wait_s)
        yield from (egress, egress_limited)
        pool = getattr(sig, "media_pool", None)
        forward = list(FORWARD_DELAY)  # this process's (workers = 0) plus every worker's
        for w in pool.worker_stats() if pool is not None else ():
            add_counts(forward, w.get("forward_delay") or [])
        yield _histogram("hoinghi_forward_delay_seconds",
                         "Time from the kernel receiving a media packet to its last copy handed on (socket buffer + fan-out)",
                         forward, 0, None)
        if pool is not None:
            w_cpu = CounterMetricFamily("hoinghi_worker_cpu_seconds", "CPU time of each media worker process", labels=["worker"])
            w_rss = GaugeMetricFamily("hoinghi_worker_resident_bytes", "Resident memory of each media worker", labels=["worker"])
            w_sites = GaugeMetricFamily("hoinghi_worker_sites", "Sites whose media each worker serves", labels=["worker"])
            w_up = GaugeMetricFamily("hoinghi_worker_up", "1 while the media worker runs", labels=["worker"])
            w_restarts = CounterMetricFamily("hoinghi_worker_restarts", "Times a media worker was restarted", labels=["worker"])
            w_pipe = CounterMetricFamily("hoinghi_worker_pipe_packets", "Packets piped between workers", labels=["worker", "direction"])
            lag: list[int] = []
            gc_pause: list[int] = []
            for w in pool.worker_stats():
                label = [str(w["index"])]
                w_cpu.add_metric(label, w["cpu_seconds"])
                w_rss.add_metric(label, w["rss_bytes"])
                w_sites.add_metric(label, w["sites"])
                w_up.add_metric(label, 1 if w["alive"] else 0)
                w_restarts.add_metric(label, w["restarts"])
                w_pipe.add_metric(label + ["in"], w["pipe_in"])
                w_pipe.add_metric(label + ["out"], w["pipe_out"])
                add_counts(lag, w.get("loop_lag") or [])
                add_counts(gc_pause, w.get("gc_pause") or [])
            yield from (w_cpu, w_rss, w_sites, w_up, w_restarts, w_pipe)
            yield _histogram("hoinghi_worker_loop_lag_seconds",
                             "How late the media workers' event loops ran a 20 ms timer (all workers)", lag, 0, None)
            yield _histogram("hoinghi_worker_gc_pause_seconds",
                             "How long the media workers' garbage-collector passes stopped them (all workers)", gc_pause, 0, None)
        yield from (rooms, connections, participants, streams, packets, octets, dropped, lost, nacks, retx, retx_refused, pacer_dropped, switches, audio_switches, speaker_changes, paused, estimate)


def _histogram(name: str, doc: str, counts: list[int], extra_first: int, total_s: Optional[float]) -> HistogramMetricFamily:
    """Per-bucket counts over LATENCY_BOUNDS_S (+ one for longer) as a Prometheus histogram."""
    counts = list(counts) + [0] * (len(LATENCY_BOUNDS_S) + 1 - len(counts))
    counts[0] += extra_first
    buckets = []
    acc = 0
    for bound, n in zip(LATENCY_BOUNDS_S, counts):
        acc += n
        buckets.append((f"{bound:g}", acc))
    buckets.append(("+Inf", acc + counts[len(LATENCY_BOUNDS_S)]))
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=total_s if total_s is not None else 0.0)


def setup_routes(app: web.Application, signaling: "SignalingService") -> None:
    registry = CollectorRegistry()
    registry.register(RoomCollector(signaling))
    registry.register(ProcessCollector(registry=None))

    async def metrics(request: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get("/metrics", metrics)
