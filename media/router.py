"""One meeting's forwarding graph: which source feeds which slot of which subscriber.

The Router owns the transports of a meeting's participants and decides, for every
subscriber, which published stream goes into each of its fixed slots. A change of who is
shown is therefore only `Consumer.set_source` on the server plus a `slots` message to the
client: no SDP renegotiation, which is what lets the set of visible sites change often in a
164-site meeting.

Ordering (who gets a slot first) is deliberately simple here: the hub first, then sites in
the order they started publishing. Last-N, speaker order and the floor refine this order.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Callable, Optional

from .consumer import Consumer
from .gcpolicy import POLICY
from .pipe import PipeOrigin
from .producer import Producer, RecvStream
from .speaker import WINDOW_S, SpeakerDetector
from .timing import add_counts
from .transport import MediaSettings, WebRtcTransport

logger = logging.getLogger(__name__)

SlotsListener = Callable[[WebRtcTransport, dict], None]


class Router:
    def __init__(self, meeting_id: str, settings: MediaSettings) -> None:
        self.meeting_id = meeting_id
        self.settings = settings
        self.transports: dict[str, WebRtcTransport] = {}
        self.priority: dict[str, int] = {}  # participant id -> lower is shown first
        self.names: dict[str, tuple[str, str]] = {}  # participant id -> (site id, name)
        self.on_slots: Optional[SlotsListener] = None
        # publisher -> site: which simulcast layers anyone receives (the rest can be paused)
        self.on_publish_layers: Optional[Callable[[WebRtcTransport, str, list[str]], None]] = None
        self._layers_timer: Optional[asyncio.TimerHandle] = None
        self._ticks = 0
        self.speakers = SpeakerDetector()
        self.speaker_order: list[str] = []  # most recent dominant speaker first
        self.on_speaker: Optional[Callable[[Optional[str]], None]] = None
        self._layer_last_used: dict[int, float] = {}  # id(RecvStream) -> last time it had a sink
        self.floor: Optional[str] = None  # participant id given the floor by the chair
        self.pinned: list[str] = []  # participant ids the chair pinned, in pin order
        self._order = 0
        self._reassign_pending = False
        self.created = time.monotonic()
        # Worker mode (media/worker.py): sites whose transports live in other workers appear
        # as remote producers fed by pipes; the control process decides the speaker from the
        # levels every worker reports, so all workers rank sites the same way.
        self.remote: dict[str, PipeOrigin] = {}  # participant id -> its remote tracks
        self.on_levels: Optional[Callable[[dict[str, tuple[int, int]]], None]] = None
        self.on_assigned: Optional[Callable[[], None]] = None

    # ---------------------------------------------------------------- membership

    def create_transport(
        self, participant_id: str, site_id: str, name: str, role: str, priority: Optional[int] = None
    ) -> WebRtcTransport:
        t = WebRtcTransport(self, participant_id, self.settings)
        self.transports[participant_id] = t
        self.add_participant(participant_id, site_id, name, role, priority)
        return t

    def add_participant(self, participant_id: str, site_id: str, name: str, role: str, priority: Optional[int] = None) -> None:
        """Know a site's name and rank. In worker mode the control process numbers joins
        (`priority`) so every worker ranks the meeting's sites identically."""
        if priority is None:
            self._order += 1
            priority = (0 if role == "hub" else 1_000_000) + self._order
        self.priority[participant_id] = priority
        self.names[participant_id] = (site_id, name)

    # ---------------------------------------------------------------- remote sites (worker mode)

    def add_remote(self, origin: PipeOrigin) -> None:
        old = self.remote.pop(origin.participant_id, None)
        if old is not None:
            old.close()
        self.remote[origin.participant_id] = origin
        self.reassign()

    def remove_remote(self, participant_id: str) -> Optional[PipeOrigin]:
        origin = self.remote.pop(participant_id, None)
        if participant_id not in self.transports:
            self.priority.pop(participant_id, None)
            self.names.pop(participant_id, None)
        if origin is not None:
            origin.close()
            POLICY.left()
        self.reassign()
        return origin

    def apply_speakers(
        self, dominant: Optional[str], loudness: dict[str, float], order: list[str], audible: Optional[list[str]] = None
    ) -> None:
        """The control process's speaker decision (worker mode): loudest-K audio and, on a
        change of dominant speaker, the video order follow it here as they would locally."""
        changed = dominant != self.speakers.dominant or order != self.speaker_order
        self.speakers.dominant = dominant
        self.speakers.loudness = loudness
        if audible is not None:
            self.speakers.audible = set(audible)
        self.speaker_order = order
        if changed:
            self.reassign()
        else:
            self.reassign_audio()

    async def remove_transport(self, participant_id: str) -> None:
        t = self.transports.pop(participant_id, None)
        self.priority.pop(participant_id, None)
        self.names.pop(participant_id, None)
        if t is not None:
            await t.close()
            POLICY.left()
        self.reassign()

    # ---------------------------------------------------------------- events from transports

    def transport_connected(self, transport: WebRtcTransport) -> None:
        POLICY.joined()
        self.reassign()
        self._schedule_layers()

    def stream_started(self, stream: RecvStream) -> None:
        self.reassign()

    def negotiated(self, transport: WebRtcTransport) -> None:
        self.reassign()

    # ---------------------------------------------------------------- slot assignment

    def reassign(self) -> None:
        """Coalesce assignment work triggered by several events in one loop iteration."""
        if self._reassign_pending:
            return
        self._reassign_pending = True
        asyncio.get_running_loop().call_soon(self._reassign)

    def _rank(self, pid: str) -> tuple:
        """Video order: the floor, then the hub (who chairs), then the sites the chair
        pinned (in pin order), then recent dominant speakers, then join order. The stage
        (slot 0) is therefore the floor, else the hub; pinned sites keep their thumbnails
        whoever speaks; speakers move in and out of the remaining thumbnails."""
        if pid == self.floor:
            return (0, 0)
        prio = self.priority.get(pid, 1 << 40)
        if prio < 1_000_000:  # the hub
            return (1, prio)
        if pid in self.pinned:
            return (2, self.pinned.index(pid))
        if pid in self.speaker_order:
            return (3, self.speaker_order.index(pid))
        return (4, prio)

    def _publishers(self, kind: str) -> list[Producer]:
        """Every open published track of `kind`, local and remote."""
        out = []
        for t in self.transports.values():
            if not t.closed:
                p = t.producers.get(kind)
                if p is not None and not p.closed:
                    out.append(p)
        for origin in self.remote.values():
            p = origin.producers.get(kind)
            if p is not None and not p.closed:
                out.append(p)
        return out

    def _video_order(self) -> list[Producer]:
        """Video publishers best first; one sort for all receivers (each skips itself)."""
        out = self._publishers("video")
        out.sort(key=lambda p: self._rank(p.participant_id))
        return out

    def _audio_order(self) -> tuple[list[Producer], list[Producer], set[str]]:
        """Audio publishers (all, those that may compete for a slot, and who they are),
        loudest first, the dominant speaker ahead; sorted once for all receivers."""
        dominant = self.speakers.dominant
        loud = self.speakers.loudness
        everyone = self._publishers("audio")
        everyone.sort(key=lambda p: (p.participant_id != dominant, -loud.get(p.participant_id, 0.0), self._rank(p.participant_id)))
        audible = self.speakers.audible
        competing = [p for p in everyone if p.participant_id in audible or p.participant_id == dominant]
        return everyone, competing, {p.participant_id for p in everyone}

    def _audio_candidates(self, order: tuple[list[Producer], list[Producer], set[str]], exclude: str, held: set[int]) -> list[Producer]:
        """One receiver's loudest-K candidates, best first."""
        everyone, audible, publishing = order
        others = len(everyone) - (exclude in publishing)
        # more publishers than audio slots: only sites that are speaking compete, so silent
        # sites (ties at zero loudness, room noise) never shuffle the slots
        out = [p for p in (audible if others > self.settings.audio_slots else everyone) if p.participant_id != exclude]
        # a site already in one of this receiver's audio slots keeps it while it is
        # audible: four people talking at once do not make three slots trade places at
        # every pause between words (see SpeakerDetector.audio_key); the sort is stable, so
        # within each group the loudness order above stands
        key = self.speakers.audio_key
        out.sort(key=lambda p: key(p.participant_id, id(p) in held))
        return out

    def _reassign(self) -> None:
        self._reassign_pending = False
        video = self._video_order()
        audio = self._audio_order()
        present = {"video": {id(p) for p in video}, "audio": {id(p) for p in audio[0]}}
        for pid, t in list(self.transports.items()):
            if not t.negotiated or t.closed:
                continue
            cands = [p for p in video if p.participant_id != pid]
            self._assign(t.consumers["video"], cands, present["video"])
            held = {id(c.assigned) for c in t.consumers["audio"] if c.assigned is not None}
            self._assign(t.consumers["audio"], self._audio_candidates(audio, pid, held), present["audio"])
            if t.connected.is_set():
                t.allocator.run()
            self._notify(t)
        if self.on_assigned is not None:
            self.on_assigned()

    def reassign_audio(self) -> None:
        """Loudest-K audio follows the speech every window; video only on speaker changes."""
        audio = self._audio_order()
        present = {id(p) for p in audio[0]}
        for pid, t in list(self.transports.items()):
            if t.negotiated and not t.closed:
                held = {id(c.assigned) for c in t.consumers["audio"] if c.assigned is not None}
                self._assign(t.consumers["audio"], self._audio_candidates(audio, pid, held), present)
                self._notify(t)
        if self.on_assigned is not None:
            self.on_assigned()

    def _notify(self, t: WebRtcTransport) -> None:
        slots = self.slots_of(t)
        if slots != t.slots_sent and self.on_slots is not None:
            t.slots_sent = slots
            self.on_slots(t, slots)

    def _assign(self, consumers: list[Consumer], candidates: list[Producer], present: Optional[set[int]] = None) -> None:
        """Slot 0 is the stage: the first candidate (the floor, else the hub), which the client shows large and the allocator lets climb highest.
        The other slots keep whoever is still among the next N-1 candidates (a change of
        speaker moves one site in or out instead of shifting every slot); newcomers take
        the freed slots."""
        if not consumers:
            return
        wanted = candidates[: len(consumers)]
        if consumers[0].kind == "audio":
            # audio has no stage: every slot is equal, so a change in who is loudest moves
            # nobody who is still among the K loudest (each move is an audible switch)
            rest, others = wanted, consumers
        else:
            stage = wanted[0] if wanted else None
            consumers[0].assign(stage)
            rest, others = wanted[1:], consumers[1:]
        keep = set()
        free = []
        for c in others:
            if c.assigned is not None and c.assigned in rest and id(c.assigned) not in keep:
                keep.add(id(c.assigned))
            else:
                free.append(c)
        for p in rest:
            if id(p) not in keep and free:
                free.pop(0).assign(p)
                keep.add(id(p))
        for c in free:
            p = c.assigned
            # nobody new needs this slot: a site that merely paused (between sentences, for
            # audio) keeps it, so slots do not empty and refill with every breath
            if p is not None and not p.closed and id(p) not in keep and (present is None or id(p) in present):
                keep.add(id(p))
                continue
            c.assign(None)

    # ---------------------------------------------------------------- publisher layers

    LAYER_IDLE_S = 5.0  # a layer nobody has received for this long is paused at the publisher

    def _schedule_layers(self) -> None:
        if self._layers_timer is None and self.transports:
            self._layers_timer = asyncio.get_running_loop().call_later(WINDOW_S, self._tick)

    def _tick(self) -> None:
        """Every speaker window: fold audio levels in; every few: publisher layers."""
        self._layers_timer = None
        if not self.transports:
            return
        audio = [t.producers["audio"] for t in self.transports.values() if "audio" in t.producers and not t.closed]
        if self.on_levels is not None:
            # worker mode: the control process decides from every worker's levels
            levels = {}
            for p in audio:
                levels[p.participant_id] = (p.level_sum, p.level_n)
                p.level_sum = p.level_n = 0
            self.on_levels(levels)
        elif self.speakers.update(audio):
            pid = self.speakers.dominant
            if pid is not None:
                if pid in self.speaker_order:
                    self.speaker_order.remove(pid)
                self.speaker_order.insert(0, pid)
                del self.speaker_order[64:]
            if self.on_speaker is not None:
                self.on_speaker(pid)
            self.reassign()
        elif audio:
            self.reassign_audio()
        self._ticks += 1
        if self._ticks % 3 == 0:
            self._update_publish_layers()
        else:
            self._schedule_layers()

    def _update_publish_layers(self) -> None:
        """Tell each simulcast publisher which layers are wanted: the lowest always (new
        viewers and thumbnails start there), and every layer up to the highest that some
        slot (or recorder) takes or waits for, kept for LAYER_IDLE_S after the last one left
        so a viewer hovering at a threshold does not make the publisher's encoder flap.
        Layers below the highest one used stay on (LiveKit's dynacast does the same): a
        viewer that must step down finds the lower layer running, and its keyframe is one
        PLI away instead of a resumed encoder's start-up (seconds in Chrome)."""
        now = time.monotonic()
        for t in list(self.transports.values()):
            p = t.producers.get("video")
            if p is None or not p.simulcast or t.closed:
                continue
            top = 0
            for i, stream in enumerate(p.streams):
                if stream.sinks:
                    self._layer_last_used[id(stream)] = now
                if now - self._layer_last_used.get(id(stream), -1e9) < self.LAYER_IDLE_S:
                    top = i
            active = [stream.rid for stream in p.streams[: top + 1]]
            if active != t.publish_layers_sent and self.on_publish_layers is not None:
                t.publish_layers_sent = active
                self.on_publish_layers(t, "video", active)
        self._schedule_layers()

    # ---------------------------------------------------------------- chair controls

    def set_floor(self, participant_id: Optional[str]) -> None:
        """Give the floor: that site is shown first to everyone (clients show it large)."""
        self.floor = participant_id
        self.reassign()

    def set_pinned(self, participant_ids: list[str]) -> None:
        """Pin sites: they rank right after the floor and the hub, so they stay in every
        receiver's thumbnails regardless of who speaks (speakers fill the other slots)."""
        if participant_ids != self.pinned:
            self.pinned = list(participant_ids)
            self.reassign()

    def set_muted(self, participant_id: str, kind: str, muted: bool) -> bool:
        """Stop (or resume) forwarding one site's audio or video, whatever its client does."""
        t = self.transports.get(participant_id)
        p = t.producers.get(kind) if t is not None else None
        if p is None:
            return False
        p.muted = muted
        if not muted and kind == "video":
            for s in p.streams:
                s.request_keyframe(time.monotonic())
        return True

    def attach_sink(self, participant_id: str, kind: str, sink) -> Optional[RecvStream]:
        """Feed any object with write(info, stream, now) and source_closed(stream) from a
        site's track (its best layer): recording and monitoring use this, not a Consumer."""
        t = self.transports.get(participant_id) or self.remote.get(participant_id)
        p = t.producers.get(kind) if t is not None else None
        if p is None:
            return None
        stream = p.best_stream()
        if stream is not None and sink not in stream.sinks:
            stream.sinks.append(sink)
            if kind == "video":
                stream.request_keyframe(time.monotonic())
        return stream

    def detach_sink(self, sink) -> None:
        for t in list(self.transports.values()) + list(self.remote.values()):
            for p in t.producers.values():
                for s in p.streams:
                    if sink in s.sinks:
                        s.sinks.remove(sink)

    def slots_of(self, transport: WebRtcTransport) -> dict:
        out: dict[str, list] = {}
        for kind in ("video", "audio"):
            items = []
            for c in transport.consumers[kind]:
                p = c.producer
                site_id, name = self.names.get(p.participant_id, (None, None)) if p is not None else (None, None)
                items.append(
                    {
                        "index": c.index,
                        "mid": c.mid,
                        "participant_id": p.participant_id if p is not None else None,
                        "site_id": site_id,
                        "name": name,
                    }
                )
            out[kind] = items
        return out

    # ---------------------------------------------------------------- introspection

    def participant_stats(self, participant_id: str) -> Optional[dict]:
        t = self.transports.get(participant_id)
        return t.stats() if t is not None else None

    def totals(self) -> dict:
        """Counters for /metrics, summed over this router's own transports (in worker mode
        each worker sends its share and the control process adds them up)."""
        transports = [t for t in self.transports.values()]
        recv = [s for t in transports for p in t.producers.values() for s in p.streams]
        consumers = [c for t in transports for cs in t.consumers.values() for c in cs]
        return {
            "streams_in_audio": sum(1 for t in transports if "audio" in t.producers),
            "streams_in_video": sum(1 for t in transports if "video" in t.producers),
            "streams_out_audio": sum(1 for c in consumers if c.kind == "audio" and c.source is not None),
            "streams_out_video": sum(1 for c in consumers if c.kind == "video" and c.source is not None),
            "packets_in": sum(t.packets_in + t.rtcp_in for t in transports),
            "packets_out": sum(t.packets_out for t in transports),
            "bytes_in": sum(t.bytes_in for t in transports),
            "bytes_out": sum(t.bytes_out for t in transports),
            "dropped": sum(t.dropped_in for t in transports),
            "lost": sum(s.lost_for_good for s in recv),
            "nacks": sum(s.nacks_sent for s in recv),
            "retransmissions": sum(c.retransmits for c in consumers),
            "retransmissions_refused": sum(c.rtx_refused for c in consumers if c.kind == "video"),
            "pacer_dropped": sum(t.pace_dropped for t in transports),
            "switches": sum(c.switches for c in consumers if c.kind == "video"),
            "audio_switches": sum(c.switches for c in consumers if c.kind == "audio"),
            "paused": sum(1 for c in consumers if c.kind == "video" and c.paused),
            "estimates": [t.estimator.estimate for t in transports if t.estimator.mode != "none"],
            "pace_waited": functools.reduce(add_counts, (t.pace_waited for t in transports), []),
            "pace_wait_s": sum(t.pace_wait_s for t in transports),
        }

    def stats(self) -> dict:
        packets_in = sum(t.packets_in for t in self.transports.values())
        packets_out = sum(t.packets_out for t in self.transports.values())
        return {
            "meeting_id": self.meeting_id,
            "participants": len(self.transports),
            "packets_in": packets_in,
            "packets_out": packets_out,
        }
