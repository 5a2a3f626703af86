"""Prometheus `/metrics`: read at scrape time from the live rooms, never on the packet path.

The forwarding core keeps plain integer counters on its transports; this collector walks
them when Prometheus asks (every 15 s or so), so metrics cost nothing per packet. Labels are
per meeting, not per site: 164 sites x several series each would swamp a small Prometheus;
per-site figures are in the hub console instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.process_collector import ProcessCollector

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
        switches = CounterMetricFamily("hoinghi_layer_switches", "Simulcast layer or source switches", labels=["meeting"])
        paused = GaugeMetricFamily("hoinghi_paused_video_slots", "Video slots paused for lack of bandwidth", labels=["meeting"])
        rooms = GaugeMetricFamily("hoinghi_rooms", "Live meetings")
        egress = GaugeMetricFamily("hoinghi_egress_bps", "The server's media uplink budget (bit/s): capacity (0 = unlimited), sent, demand, planned", labels=["what"])
        egress_limited = GaugeMetricFamily("hoinghi_egress_limited_receivers", "Receivers whose layers the uplink budget lowers")
        connections = GaugeMetricFamily("hoinghi_signaling_connections", "Open signaling WebSockets")
        estimates: list[float] = []
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
            transports = list(room.router.transports.values())
            participants.add_metric([mid], len(room.sessions))
            for kind in ("audio", "video"):
                streams.add_metric([mid, "in", kind], sum(1 for t in transports if kind in t.producers))
                streams.add_metric(
                    [mid, "out", kind], sum(1 for t in transports for c in t.consumers[kind] if c.source is not None)
                )
            packets.add_metric([mid, "in"], sum(t.packets_in + t.rtcp_in for t in transports))
            packets.add_metric([mid, "out"], sum(t.packets_out for t in transports))
            octets.add_metric([mid, "in"], sum(t.bytes_in for t in transports))
            octets.add_metric([mid, "out"], sum(t.bytes_out for t in transports))
            dropped.add_metric([mid], sum(t.dropped_in for t in transports))
            recv_streams = [s for t in transports for p in t.producers.values() for s in p.streams]
            lost.add_metric([mid], sum(s.lost_for_good for s in recv_streams))
            nacks.add_metric([mid], sum(s.nacks_sent for s in recv_streams))
            consumers = [c for t in transports for cs in t.consumers.values() for c in cs]
            retx.add_metric([mid], sum(c.retransmits for c in consumers))
            switches.add_metric([mid], sum(c.switches for c in consumers))
            paused.add_metric([mid], sum(1 for t in transports for c in t.consumers["video"] if c.paused))
            estimates.extend(t.estimator.estimate for t in transports if t.estimator.mode != "none")
        buckets = []
        for bound in ESTIMATE_BUCKETS:
            buckets.append((f"{bound:g}", sum(1 for e in estimates if e <= bound)))
        buckets.append(("+Inf", len(estimates)))
        estimate = HistogramMetricFamily(
            "hoinghi_downlink_estimate_bps", "Per-site downlink bandwidth estimates", buckets=buckets, sum_value=sum(estimates)
        )
        yield from (egress, egress_limited)
        yield from (rooms, connections, participants, streams, packets, octets, dropped, lost, nacks, retx, switches, paused, estimate)


def setup_routes(app: web.Application, signaling: "SignalingService") -> None:
    registry = CollectorRegistry()
    registry.register(RoomCollector(signaling))
    registry.register(ProcessCollector(registry=None))

    async def metrics(request: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get("/metrics", metrics)
