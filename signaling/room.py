"""A meeting in memory: its participants' sessions and its media Router.

Storage (SQLite) holds what must survive a restart (meetings, sites, events); the Room holds
what only exists while people are connected. One Room per live meeting, created by the
first join and dropped when the last participant leaves.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

from media import MediaSettings, Router

if TYPE_CHECKING:
    from .session import Session

logger = logging.getLogger(__name__)


@dataclass
class Participant:
    id: str
    site_id: str
    name: str
    role: str
    audio: bool = True
    video: bool = True
    publishing: dict = field(default_factory=lambda: {"audio": False, "video": False})

    def info(self) -> dict:
        return {
            "id": self.id,
            "site_id": self.site_id,
            "name": self.name,
            "role": self.role,
            "audio": self.audio,
            "video": self.video,
            "publishing": dict(self.publishing),
        }


class Room:
    def __init__(self, meeting_id: str, title: str, media: MediaSettings, max_participants: int) -> None:
        self.meeting_id = meeting_id
        self.title = title
        self.max_participants = max_participants
        self.router = Router(meeting_id, media)
        self.router.on_slots = self._on_slots
        self.sessions: dict[str, "Session"] = {}  # participant id -> session

    def by_site(self, site_id: str) -> Optional["Session"]:
        for s in self.sessions.values():
            if s.participant is not None and s.participant.site_id == site_id:
                return s
        return None

    def add(self, session: "Session") -> None:
        assert session.participant is not None
        self.sessions[session.participant.id] = session
        self.broadcast({"type": "participant_joined", "participant": session.participant.info()}, exclude=session)

    async def remove(self, session: "Session") -> None:
        p = session.participant
        if p is None or self.sessions.get(p.id) is not session:
            return
        del self.sessions[p.id]
        await self.router.remove_transport(p.id)
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

    def _on_slots(self, transport, slots: dict) -> None:
        session = self.sessions.get(transport.participant_id)
        if session is not None:
            session.send({"type": "slots", **slots})

    @property
    def empty(self) -> bool:
        return not self.sessions
