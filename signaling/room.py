"""A meeting in memory: its participants' sessions, its media Router and the chair's state.

Storage (SQLite) holds what must survive a restart (meetings, sites, events, roll calls);
the Room holds what only exists while people are connected. One Room per live meeting,
created by the first join and dropped when the last participant leaves. What the chair
decided about sites (floor, mutes, removals, raised hands) lives in a MeetingControl keyed
by site id, which outlives both a site's reconnection and the room emptying.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from media import MediaSettings, Router

if TYPE_CHECKING:
    from .session import Session

logger = logging.getLogger(__name__)

#: Seconds between two `link_stats` messages to every participant.
STATS_INTERVAL = 2.0

CHAIR_ROLES = ("hub", "operator")
KINDS = ("audio", "video")


@dataclass
class Participant:
    id: str
    site_id: str
    name: str
    role: str
    audio: bool = True
    video: bool = True
    publishing: dict = field(default_factory=lambda: {"audio": False, "video": False})
    hand: Optional[float] = None  # Unix time the site asked to speak; None = not asking
    chair_muted: dict = field(default_factory=lambda: {"audio": False, "video": False})

    @property
    def is_chair(self) -> bool:
        return self.role in CHAIR_ROLES

    def info(self) -> dict:
        return {
            "id": self.id,
            "site_id": self.site_id,
            "name": self.name,
            "role": self.role,
            "audio": self.audio,
            "video": self.video,
            "publishing": dict(self.publishing),
            "hand": None if self.hand is None else int(self.hand * 1000),
            "chair_muted": dict(self.chair_muted),
        }


@dataclass
class MeetingControl:
    """What the chair decided, by site id; dropped when the meeting ends."""

    floor: Optional[str] = None  # site given the floor
    spotlight: Optional[str] = None  # site shown large to everyone, over the floor
    pins: list[str] = field(default_factory=list)  # sites kept in everyone's thumbnails, in pin order
    hands: dict[str, float] = field(default_factory=dict)  # site id -> time it asked to speak
    muted: dict[str, set[str]] = field(default_factory=dict)  # site id -> kinds muted by the chair
    all_muted: bool = False  # "mute all" in force: sites joining later come in muted
    removed: set[str] = field(default_factory=set)  # sites refused until readmitted
    admitted: set[str] = field(default_factory=set)  # sites that have been in: may rejoin when locked
    roll_call: Optional[int] = None  # id of the open roll call
    answered: set[str] = field(default_factory=set)  # sites that answered the open roll call

    def is_muted(self, site_id: str, kind: str) -> bool:
        return kind in self.muted.get(site_id, ())

    def set_muted(self, site_id: str, kind: str, muted: bool) -> None:
        kinds = self.muted.setdefault(site_id, set())
        if muted:
            kinds.add(kind)
        else:
            kinds.discard(kind)
            if not kinds:
                del self.muted[site_id]


class Room:
    def __init__(
        self,
        meeting_id: str,
        title: str,
        media: MediaSettings,
        max_participants: int,
        control: Optional[MeetingControl] = None,
        router: Any = None,
    ) -> None:
        self.meeting_id = meeting_id
        self.title = title
        self.max_participants = max_participants
        # in-process Router, or media.pool.RouterProxy when media runs in worker processes
        self.router = router if router is not None else Router(meeting_id, media)
        self.router.on_slots = self._on_slots
        self.router.on_speaker = self._on_speaker
        self.router.on_publish_layers = self._on_publish_layers
        self.speaker: Optional[str] = None  # participant id of the latest dominant speaker
        self.sessions: dict[str, "Session"] = {}  # participant id -> session
        self.control = control if control is not None else MeetingControl()
        self._stats_task: Optional[asyncio.Task] = None
        self._counters: dict[str, tuple[float, int, int]] = {}  # pid -> (time, bytes in, bytes out)
        self.last_summaries: dict[str, dict] = {}  # pid -> link summary of the last round (admin roster)
        self.egress: Any = None  # the process's media.budget.EgressBudget (chairs see its figures)

    def by_site(self, site_id: Optional[str]) -> Optional["Session"]:
        if site_id is None:
            return None
        for s in self.sessions.values():
            if s.participant is not None and s.participant.site_id == site_id:
                return s
        return None

    def add(self, session: "Session") -> None:
        assert session.participant is not None
        self.sessions[session.participant.id] = session
        self.broadcast({"type": "participant_joined", "participant": session.participant.info()}, exclude=session)
        self.apply_floor()
        if self._stats_task is None:
            self._stats_task = asyncio.get_running_loop().create_task(self._stats_loop())

    async def remove(self, session: "Session") -> None:
        p = session.participant
        if p is None or self.sessions.get(p.id) is not session:
            return
        del self.sessions[p.id]
        self._counters.pop(p.id, None)
        if not self.sessions and self._stats_task is not None:
            self._stats_task.cancel()
            self._stats_task = None
        await self.router.remove_transport(p.id)
        self.apply_floor()
        self.broadcast({"type": "participant_left", "participant_id": p.id})

    def updated(self, session: "Session") -> None:
        if session.participant is not None:
            self.broadcast({"type": "participant_updated", "participant": session.participant.info()})

    def others(self, session: "Session") -> list[dict]:
        return [s.participant.info() for s in self.sessions.values() if s is not session and s.participant]

    def broadcast(self, message: dict, exclude: Optional["Session"] = None) -> None:
        for s in list(self.sessions.values()):
            if s is not exclude:
                s.send(message)

    def chairs(self) -> list["Session"]:
        return [s for s in self.sessions.values() if s.participant is not None and s.participant.is_chair]

    def _on_publish_layers(self, transport, kind: str, active: list[str]) -> None:
        session = self.sessions.get(transport.participant_id)
        if session is not None:
            session.send({"type": "publish_layers", "kind": kind, "active": active})

    def _on_speaker(self, participant_id: Optional[str]) -> None:
        if participant_id == self.speaker:
            return
        self.speaker = participant_id
        self.broadcast({"type": "speaker", **self.participant_ref(participant_id)})

    def participant_ref(self, participant_id: Optional[str]) -> dict:
        s = self.sessions.get(participant_id) if participant_id else None
        p = s.participant if s is not None else None
        if p is None:
            return {"participant_id": None, "site_id": None, "name": None}
        return {"participant_id": p.id, "site_id": p.site_id, "name": p.name}

    def _on_slots(self, transport, slots: dict) -> None:
        session = self.sessions.get(transport.participant_id)
        if session is not None:
            session.send({"type": "slots", **slots})

    @property
    def empty(self) -> bool:
        return not self.sessions

    async def close(self) -> None:
        if self._stats_task is not None:
            self._stats_task.cancel()
            self._stats_task = None
        for pid in list(self.router.transports):
            await self.router.remove_transport(pid)

    # ---------------------------------------------------------------- floor

    def site_ref(self, site_id: Optional[str]) -> Optional[dict]:
        """{participant_id, site_id, name} of a site, participant_id null when it is not connected."""
        if site_id is None:
            return None
        s = self.by_site(site_id)
        p = s.participant if s is not None else None
        return {"participant_id": p.id if p else None, "site_id": site_id, "name": p.name if p else None}

    def apply_floor(self) -> None:
        """Show the spotlighted site first, else the site holding the floor (if connected);
        pinned sites (those connected) next, in pin order."""
        pid = None
        for site in (self.control.spotlight, self.control.floor):
            s = self.by_site(site)
            if s is not None and s.participant is not None:
                pid = s.participant.id
                break
        if self.router.floor != pid:
            self.router.set_floor(pid)
        pinned = []
        for site in self.control.pins:
            s = self.by_site(site)
            if s is not None and s.participant is not None:
                pinned.append(s.participant.id)
        self.router.set_pinned(pinned)

    def pins_message(self) -> dict:
        """The `pins` message: every pinned site, participant_id null while it is away."""
        return {"type": "pins", "pins": [self.site_ref(site) for site in self.control.pins]}

    # ---------------------------------------------------------------- link statistics

    async def _stats_loop(self) -> None:
        while True:
            await asyncio.sleep(STATS_INTERVAL)
            try:
                self.send_link_stats()
            except Exception:  # statistics must never take the meeting down
                logger.exception("meeting %s: link statistics failed", self.meeting_id)

    def send_link_stats(self) -> None:
        """One `link_stats` to every participant: its own link; chairs also get everyone's."""
        now = time.monotonic()
        raw = {pid: self.router.participant_stats(pid) for pid in self.sessions}
        summaries = {pid: self._summary(pid, st, now) for pid, st in raw.items()}
        self.last_summaries = summaries
        for pid, session in list(self.sessions.items()):
            own = dict(summaries[pid])
            st = raw.get(pid)
            if st is not None:
                own["receiving"] = self._receiving(st, raw)
                own["sending"] = st.get("published", {})
            msg: dict[str, Any] = {"type": "link_stats", "self": own}
            if session.participant is not None and session.participant.is_chair:
                msg["participants"] = summaries
                if self.egress is not None:
                    msg["egress"] = self.egress.snapshot()
            session.send(msg)

    def _summary(self, pid: str, st: Optional[dict], now: float) -> dict:
        if st is None:
            return {"media": False}
        prev = self._counters.get(pid)
        self._counters[pid] = (now, st.get("bytes_in", 0), st.get("bytes_out", 0))
        rate_in = rate_out = None
        if prev is not None and now > prev[0]:
            rate_in = round(max(0, st.get("bytes_in", 0) - prev[1]) * 8 / (now - prev[0]))
            rate_out = round(max(0, st.get("bytes_out", 0) - prev[2]) * 8 / (now - prev[0]))
        published = st.get("published", {})
        loss_in = max((layer.get("loss", 0.0) for pub in published.values() for layer in pub.get("layers", [])), default=0.0)
        video_in = st.get("received", {}).get("video", [])
        filled = [r for r in video_in if r.get("participant_id")]
        loss_out = max((r.get("loss", 0.0) for kind in st.get("received", {}).values() for r in kind if r.get("participant_id")), default=0.0)
        video_pub = published.get("video")
        return {
            "media": True,
            "rtt_ms": st.get("rtt_ms") or None,
            "estimated_bps": st.get("estimated_bps") or None,
            "bitrate_in": rate_in,
            "bitrate_out": rate_out,
            "loss_in": loss_in,
            "loss_out": loss_out,
            # the layer of the large view (first filled video slot), what the roster shows
            "layer": min(filled, key=lambda r: r.get("index", 0)).get("layer") if filled else None,
            "video_layers": sum(1 for x in video_pub.get("layers", []) if x.get("active")) if video_pub else 0,
            # packets to this site the server dropped itself (its pacer held more than a
            # second at the site's estimate): loss that is neither the site's link nor an uplink
            "pacer_dropped": st.get("pacer_dropped", 0),
        }

    def _receiving(self, st: dict, raw: dict[str, Optional[dict]]) -> list[dict]:
        """What the server sends this participant, slot by slot, with the source layer's figures."""
        out = []
        for kind in KINDS:
            for entry in st.get("received", {}).get(kind, []):
                src_pid = entry.get("participant_id")
                if not src_pid:
                    continue
                src = self.sessions.get(src_pid)
                item = {**entry, "kind": kind}
                if src is not None and src.participant is not None:
                    item["site_id"] = src.participant.site_id
                    item["name"] = src.participant.name
                pub = (raw.get(src_pid) or {}).get("published", {}).get(kind)
                layers = pub.get("layers", []) if pub else []
                layer = entry.get("layer")
                if isinstance(layer, int) and 0 <= layer < len(layers):
                    item.setdefault("rid", layers[layer].get("rid"))
                    item.setdefault("bitrate", layers[layer].get("bitrate"))
                if kind == "video":
                    # a chair mute explains more than the allocator's view; else its own reason
                    if pub is not None and pub.get("muted"):
                        item["reason"] = "muted_by_chair"
                    elif not entry.get("reason"):
                        item["reason"] = _reason(layer, pub)
                out.append(item)
        return out


def _reason(layer: Any, pub: Optional[dict]) -> Optional[str]:
    """Why this layer, as far as the published streams tell, when the router gives no reason."""
    if pub is None:
        return None
    layers = pub.get("layers", [])
    if len(layers) <= 1:
        return "single_layer"
    active = [i for i, x in enumerate(layers) if x.get("active")]
    if not isinstance(layer, int) or not active:
        return None
    return "best_available" if layer >= max(active) else "lower_layer"
