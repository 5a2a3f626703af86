"""The signaling service: the `/ws` endpoint and the registry of live rooms.

It depends on two narrow things from the server: something that verifies tokens and
something that stores meetings and events. Both are passed in, so this package has no
knowledge of configuration files or databases.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, NamedTuple, Optional, Protocol, Union

from aiohttp import web

from media import MediaSettings
from media.budget import EgressBudget

from .admissions import load_admissions
from .chair import Chair
from .joinqueue import CONCURRENCY, RATE_PER_S, JoinQueue
from .room import MeetingControl, Room
from .schema import MAX_MESSAGE_BYTES
from .session import CLOSE_AUTH, CLOSE_FORBIDDEN, CLOSE_NOT_FOUND, Session

logger = logging.getLogger(__name__)


class TokenVerifier(Protocol):
    def verify(self, token: str) -> Any: ...


class MeetingStore(Protocol):
    """What signaling needs from storage (server/storage.py's Storage has all of it)."""

    def get_meeting(self, meeting_id: str) -> Any: ...
    def site_may_join(self, meeting_id: str, site_id: str) -> bool: ...
    def add_event(self, meeting_id: str, kind: str, site_id: Any = None, data: Any = None) -> Any: ...
    def set_meeting_status(self, meeting_id: str, status: str) -> None: ...
    def set_meeting_locked(self, meeting_id: str, locked: bool) -> None: ...
    def meeting_site_ids(self, meeting_id: str) -> list[str]: ...
    def list_sites(self) -> list[Any]: ...
    def start_roll_call(self, meeting_id: str, expected: Any, started_by: Any = None) -> Any: ...
    def answer_roll_call(self, roll_call_id: int, site_id: str, site_name: str) -> bool: ...
    def mark_roll_call_connected(self, roll_call_id: int, site_id: str, site_name: str) -> None: ...
    def end_roll_call(self, roll_call_id: int) -> Any: ...
    def end_open_roll_calls(self, meeting_id: str) -> None: ...
    def get_roll_call(self, roll_call_id: int) -> Any: ...
    def attendance(self, roll_call_id: int) -> list[Any]: ...


#: Delay the `bye` of a shutdown asks clients to wait before rejoining: long enough for a
#: service manager to start the new process, short enough that nobody notices.
RESTART_RETRY_MS = 2000


class Refusal(NamedTuple):
    code: str
    message: str
    close_code: int


class SignalingService:
    def __init__(
        self,
        tokens: TokenVerifier,
        storage: MeetingStore,
        media: MediaSettings,
        max_participants: int = 200,
        auth_error: type[Exception] = Exception,
        egress_bps: float = 0.0,
        join_concurrency: int = CONCURRENCY,
        joins_per_second: float = RATE_PER_S,
        ice_servers: Optional[Callable[[str], list[dict]]] = None,
        media_pool: Any = None,
    ) -> None:
        self.tokens = tokens
        self.storage = storage
        self.media = media
        self.max_participants = max_participants
        self.auth_error = auth_error
        self.rooms: dict[str, Room] = {}
        self.sessions: set[Session] = set()
        self.controls: dict[str, MeetingControl] = {}  # meeting id -> chair state
        self.chair = Chair(self)
        #: paces media set-ups so a join storm is let in steadily, never refused
        self.join_queue = JoinQueue(join_concurrency, joins_per_second)
        self.closing = False  # set by shutdown(): joins are refused from then on
        #: the server's uplink shared by every receiver of this process (0 = unlimited)
        # (with media workers, each worker runs its own budget over its receivers with a
        # share of the capacity: media.pool.PoolEgress splits it by demand)
        self.egress: Any = (
            media_pool.egress(egress_bps) if media_pool is not None else EgressBudget(egress_bps, self._local_transports)
        )
        self._ice_servers = ice_servers
        #: media.pool.WorkerPool when media runs in worker processes; None: in this process
        self.media_pool = media_pool
        if media_pool is not None:
            media_pool.on_sites_lost = self._media_lost

    def ice_servers_for(self, site_id: str) -> list[dict]:
        """STUN/TURN servers for a join reply; TURN credentials are minted per site and join."""
        if self._ice_servers is not None:
            return self._ice_servers(site_id)
        return list(self.media.ice_servers)

    def admit(self, token: str) -> Union[tuple[Any, Any], Refusal]:
        """Verify a join token and find its meeting; a refusal is (code, message, close code)."""
        if self.closing:
            return Refusal("server_shutdown", "the server is restarting; reconnect in a few seconds", 1001)
        try:
            claims = self.tokens.verify(token)
        except self.auth_error as exc:
            code = getattr(exc, "code", "auth_invalid")
            if code == "auth_expired":
                return Refusal(code, "the join link has expired; ask the hub for a new one", CLOSE_AUTH)
            return Refusal("auth_invalid", "the join link is not valid; check that it was copied whole", CLOSE_AUTH)
        meeting = self.storage.get_meeting(claims.meeting_id)
        if meeting is None:
            return Refusal("meeting_not_found", f"meeting {claims.meeting_id!r} does not exist", CLOSE_NOT_FOUND)
        if getattr(meeting, "status", "") == "ended":
            return Refusal("meeting_ended", "this meeting has ended", CLOSE_NOT_FOUND)
        if claims.role == "site" and not self.storage.site_may_join(claims.meeting_id, claims.site_id):
            return Refusal("not_invited", f"site {claims.site_id!r} is not on this meeting's list", CLOSE_FORBIDDEN)
        control = self.control_for(meeting.id)  # loads the stored removed/admitted lists
        if claims.role == "site" and claims.site_id in control.removed:
            return Refusal("removed", "the hub removed this site from the meeting; call the hub to be let back in", CLOSE_FORBIDDEN)
        if claims.role == "site" and meeting.locked and claims.site_id not in control.admitted:
            return Refusal("meeting_locked", "the meeting is locked: no new sites are let in; call the hub", CLOSE_FORBIDDEN)
        return claims, meeting

    def _local_transports(self) -> list:
        """Receivers whose media this process sends (what its EgressBudget divides)."""
        return [t for room in self.rooms.values() for t in getattr(room.router, "transports", {}).values()]

    def control_for(self, meeting_id: str) -> MeetingControl:
        control = self.controls.get(meeting_id)
        if control is None:
            control = self.controls[meeting_id] = MeetingControl()
            load_admissions(control, self.storage, meeting_id)
        return control

    def room_for(self, meeting: Any) -> Room:
        room = self.rooms.get(meeting.id)
        if room is None:
            router = self.media_pool.router(meeting.id) if self.media_pool is not None else None
            room = Room(meeting.id, meeting.title, self.media, self.max_participants, self.control_for(meeting.id), router=router)
            self.rooms[meeting.id] = room
            room.egress = self.egress
            self.egress.start()
        return room

    def expected_sites(self, meeting_id: str) -> list[tuple[str, str, str | None]]:
        """(site id, name, parent id) of the sites expected in a meeting: its invitation
        list, or every registered district and commune when it is open to all."""
        sites = {s.id: s for s in self.storage.list_sites()}
        invited = self.storage.meeting_site_ids(meeting_id)
        if invited:
            return [(sid, sites[sid].name if sid in sites else sid, sites[sid].parent_id if sid in sites else None) for sid in invited]
        return [(s.id, s.name, s.parent_id) for s in sites.values() if s.level != "province"]

    async def end_meeting(self, meeting_id: str, by: Any = None) -> None:
        """Mark the meeting ended, close its roll call, and send every participant away."""
        self.storage.set_meeting_status(meeting_id, "ended")
        self.storage.end_open_roll_calls(meeting_id)
        self.event(meeting_id, "meeting_ended", None, {"by": by} if by else None)
        room = self.rooms.get(meeting_id)
        if room is not None:
            for session in list(room.sessions.values()):
                session.send({"type": "bye", "reason": "meeting_ended"})
                session.close(CLOSE_NOT_FOUND, "meeting ended")
                await session._leave()
        self.controls.pop(meeting_id, None)
        clear = getattr(self.storage, "clear_site_admissions", None)
        if clear is not None:  # removals and the lock's "has been in" list end with the meeting
            clear(meeting_id)

    def room_maybe_empty(self, room: Room) -> None:
        if room.empty and self.rooms.get(room.meeting_id) is room:
            del self.rooms[room.meeting_id]
            if self.media_pool is not None:
                self.media_pool.drop_router(room.meeting_id)

    def _media_lost(self, meeting_id: str, participant_ids: list[str]) -> None:
        """A media worker died: its sites' connections are gone with it. Tell each site to
        reconnect (its page does so at once and lands on a live worker); the meeting, the
        chair's decisions and every other site carry on."""
        room = self.rooms.get(meeting_id)
        if room is None:
            return
        logger.warning("meeting %s: media worker lost; %d site(s) reconnecting", meeting_id, len(participant_ids))
        for pid in participant_ids:
            session = room.sessions.get(pid)
            if session is not None:
                session.send({"type": "bye", "reason": "media_restart"})
                session.close(1012, "media worker restarted")

    def event(self, meeting_id: str, kind: str, site_id: Any = None, data: Any = None) -> None:
        try:
            self.storage.add_event(meeting_id, kind, site_id, data)
        except Exception:
            logger.exception("could not store event %s for meeting %s", kind, meeting_id)

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        # aiohttp itself closes frames over max_msg_size without a reply; allow 4x so the
        # session can answer an oversized message with a clear error instead.
        ws = web.WebSocketResponse(max_msg_size=4 * MAX_MESSAGE_BYTES, heartbeat=30.0)
        await ws.prepare(request)
        session = Session(self, ws, request.remote or "?")
        self.sessions.add(session)
        try:
            await session.run()
        finally:
            self.sessions.discard(session)
        return ws

    async def shutdown(self) -> None:
        """SIGTERM: admit nobody, tell every site the server is restarting (the client then
        rejoins with a short delay, on its own), and close every media transport.

        The meeting itself is untouched: its status, lock, removals, events and roll calls
        are in storage, so the restarted server takes the sites back where they were.
        """
        self.closing = True
        self.egress.stop()
        for meeting_id in list(self.rooms):
            self.event(meeting_id, "server_shutdown")
        for session in list(self.sessions):
            session.send({
                "type": "bye",
                "reason": "server_shutdown",
                "retry_after_ms": RESTART_RETRY_MS,
                "message": "the server is restarting; reconnecting shortly",
            })
            session.close(1001, "server restarting")
        for room in list(self.rooms.values()):
            await room.close()
