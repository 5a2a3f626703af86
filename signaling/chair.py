"""Chair actions: what the hub (or an operator) does to a meeting, and requests to speak.

One implementation for both doors: the `chair` WebSocket message of a hub/operator
participant and the admin REST API (`POST /api/meetings/{id}/actions`). Every action
changes the meeting's MeetingControl (keyed by site, so it survives reconnections), tells
the sites at once over their WebSockets, enforces mutes in the media Router (the server
stops forwarding, whatever the site's browser does) and writes the meeting's event log.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Optional

from .room import KINDS, MeetingControl, Room
from .schema import CHAIR_ACTIONS as ACTIONS
from .schema import MessageError
from .session import CLOSE_FORBIDDEN

if TYPE_CHECKING:
    from .service import SignalingService
    from .session import Session

logger = logging.getLogger(__name__)

#: Chairs get the roll-call results at most this often while answers pour in (164 sites
#: answering within seconds would otherwise mean 164 full result lists to each chair).
ROLL_CALL_COALESCE_S = 0.3

#: Most sites pinned at once: the thumbnails after the stage with the default 9 slots.
MAX_PINS = 8


class Chair:
    def __init__(self, service: "SignalingService") -> None:
        self.service = service
        self._rc_pending: set[str] = set()  # meetings with a chairs' roll-call update scheduled

    @property
    def storage(self) -> Any:
        return self.service.storage

    async def act(
        self,
        meeting_id: str,
        action: str,
        *,
        participant_id: Optional[str] = None,
        site_id: Optional[str] = None,
        kind: Optional[str] = None,
        by: Optional[str] = None,
    ) -> dict:
        """Carry out one action; returns {action, site_id?, ...}. Raises MessageError (code, message)."""
        if action not in ACTIONS:
            raise MessageError("invalid_message", f"unknown chair action {action!r}")
        meeting = self.storage.get_meeting(meeting_id)
        if meeting is None:
            raise MessageError("meeting_not_found", f"meeting {meeting_id!r} does not exist")
        if meeting.status == "ended" and action not in ("start", "end"):
            raise MessageError("meeting_ended", "the meeting has ended; start it again to reopen it")
        room = self.service.rooms.get(meeting_id)
        control = self.service.control_for(meeting_id)
        site = self._target(room, participant_id, site_id)
        if ACTIONS[action] and site is None:
            raise MessageError("invalid_message", f"{action} needs participant_id or site_id")
        if action in ("floor", "spotlight") and site is not None and (room is None or room.by_site(site) is None):
            raise MessageError("not_found", f"site {site!r} is not connected to this meeting")
        result: dict[str, Any] = {"action": action}
        if site is not None:
            result["site_id"] = site

        if action == "floor":
            self.give_floor(meeting_id, room, control, site, by)
        elif action == "spotlight":
            control.spotlight = site
            if room is not None:
                room.apply_floor()
                room.broadcast({"type": "spotlight", **_ref_or_none(room, site)})
            self._event(meeting_id, "spotlight", site, by)
        elif action in ("pin", "unpin", "unpin_all"):
            result["pins"] = self.set_pin(meeting_id, room, control, site, action, by)
        elif action in ("mute", "unmute"):
            result["kind"] = kind or "audio"
            self.set_muted(meeting_id, room, control, site, result["kind"], action == "mute", by)
        elif action in ("mute_all", "unmute_all"):
            result["sites"] = self.mute_all(meeting_id, room, control, action == "mute_all", by)
        elif action == "remove":
            await self.remove(meeting_id, room, control, site, by)
        elif action == "readmit":
            control.removed.discard(site)
            self._event(meeting_id, "readmit", site, by)
        elif action == "lower_hand":
            session = room.by_site(site) if room is not None else None
            self.set_hand(meeting_id, room, control, site, session, False, by=by)
        elif action in ("lock", "unlock"):
            locked = action == "lock"
            self.storage.set_meeting_locked(meeting_id, locked)
            if room is not None:
                room.broadcast({"type": "meeting_locked", "locked": locked})
            self._event(meeting_id, action, None, by)
        elif action == "roll_call_start":
            result["roll_call_id"] = self.start_roll_call(meeting_id, room, control, by)
        elif action == "roll_call_end":
            result["roll_call_id"] = self.end_roll_call(meeting_id, room, control, by)
        elif action == "start":
            if meeting.status != "live":
                self.storage.set_meeting_status(meeting_id, "live")
                if room is not None:
                    room.broadcast({"type": "meeting_status", "status": "live"})
                self._event(meeting_id, "meeting_started", None, by)
        elif action == "end":
            await self.service.end_meeting(meeting_id, by)
        return result

    # ---------------------------------------------------------------- pieces

    @staticmethod
    def _target(room: Optional[Room], participant_id: Optional[str], site_id: Optional[str]) -> Optional[str]:
        if participant_id is not None:
            session = room.sessions.get(participant_id) if room is not None else None
            if session is None or session.participant is None:
                raise MessageError("not_found", f"participant {participant_id!r} is not in this meeting")
            return session.participant.site_id
        return site_id

    def _event(self, meeting_id: str, kind: str, site_id: Optional[str], by: Optional[str], data: Optional[dict] = None) -> None:
        payload = dict(data or {})
        if by is not None:
            payload["by"] = by
        self.service.event(meeting_id, kind, site_id, payload or None)

    def give_floor(self, meeting_id: str, room: Optional[Room], control: MeetingControl, site: Optional[str], by: Optional[str]) -> None:
        previous, control.floor = control.floor, site
        if control.all_muted and previous is not None and previous != site:
            # "mute all" is in force: the site that spoke goes back to listening
            prev = room.by_site(previous) if room is not None else None
            if prev is None or prev.participant is None or not prev.participant.is_chair:
                self.set_muted(meeting_id, room, control, previous, "audio", True, by, log=False)
        if site is not None:
            session = room.by_site(site) if room is not None else None
            self.set_hand(meeting_id, room, control, site, session, False, by=by, log=False)
            if control.is_muted(site, "audio"):
                self.set_muted(meeting_id, room, control, site, "audio", False, by, log=False)
        if room is not None:
            room.apply_floor()
            room.broadcast({"type": "floor", **_ref_or_none(room, site)})
        self._event(meeting_id, "floor", site, by)

    def set_pin(
        self, meeting_id: str, room: Optional[Room], control: MeetingControl, site: Optional[str], action: str,
        by: Optional[str],
    ) -> list[str]:
        """Pin/unpin a site, or unpin all; returns the pinned site ids. A pin is kept by site
        id, so it holds across the site's reconnections; at most MAX_PINS at a time (more
        pins than thumbnails would leave no room for whoever speaks)."""
        before = list(control.pins)
        if action == "pin":
            if site not in control.pins:
                if len(control.pins) >= MAX_PINS:
                    raise MessageError("too_many_pins", f"at most {MAX_PINS} sites can be pinned; unpin one first")
                control.pins.append(site)
        elif action == "unpin":
            if site in control.pins:
                control.pins.remove(site)
        else:
            control.pins.clear()
        if control.pins != before:
            if room is not None:
                room.apply_floor()
                room.broadcast(room.pins_message())
            self._event(meeting_id, action, site, by)
        return list(control.pins)

    def set_muted(
        self, meeting_id: str, room: Optional[Room], control: MeetingControl, site: str, kind: str, muted: bool,
        by: Optional[str], log: bool = True,
    ) -> bool:
        """Chair mute of one site's audio or video: enforced by the router, told to the site."""
        if kind not in KINDS:
            raise MessageError("invalid_message", f"kind must be audio or video, not {kind!r}")
        changed = control.is_muted(site, kind) != muted
        control.set_muted(site, kind, muted)
        session = room.by_site(site) if room is not None else None
        if session is not None and session.participant is not None:
            p = session.participant
            if p.chair_muted.get(kind) != muted:
                p.chair_muted[kind] = muted
                room.router.set_muted(p.id, kind, muted)  # False while its media is not up: applied at offer
                session.send({"type": "muted_by_chair", "kind": kind, "muted": muted})
                room.updated(session)
        if log and changed:
            self._event(meeting_id, "chair_mute" if muted else "chair_unmute", site, by, {"kind": kind})
        return changed

    def mute_all(self, meeting_id: str, room: Optional[Room], control: MeetingControl, muted: bool, by: Optional[str]) -> int:
        """Every site's microphone (not the hub's or operators'); the floor keeps its voice."""
        control.all_muted = muted
        if muted:
            sites = [s.participant.site_id for s in (room.sessions.values() if room else []) if s.participant and not s.participant.is_chair]
            sites = [s for s in sites if s != control.floor]
        else:
            sites = [s for s, kinds in list(control.muted.items()) if "audio" in kinds]
        n = sum(1 for s in sites if self.set_muted(meeting_id, room, control, s, "audio", muted, by, log=False))
        self._event(meeting_id, "mute_all" if muted else "unmute_all", None, by, {"sites": n})
        return n

    async def remove(self, meeting_id: str, room: Optional[Room], control: MeetingControl, site: str, by: Optional[str]) -> None:
        control.removed.add(site)
        control.hands.pop(site, None)
        if site in control.pins:
            control.pins.remove(site)
            if room is not None:
                room.broadcast(room.pins_message())
        for attr, msg in (("floor", "floor"), ("spotlight", "spotlight")):
            if getattr(control, attr) == site:
                setattr(control, attr, None)
                if room is not None:
                    room.broadcast({"type": msg, **_ref_or_none(room, None)})
        self._event(meeting_id, "remove", site, by)
        session = room.by_site(site) if room is not None else None
        if session is not None:
            session.send({"type": "bye", "reason": "removed"})
            session.close(CLOSE_FORBIDDEN, "removed")
            await session._leave()

    def set_hand(
        self, meeting_id: str, room: Optional[Room], control: MeetingControl, site: str,
        session: Optional["Session"], raised: bool, by: Optional[str] = None, log: bool = True,
    ) -> bool:
        """A request to speak (raised) or its end; False if nothing changed."""
        was = site in control.hands
        if raised == was:
            return False
        if raised:
            control.hands[site] = time.time()
        else:
            control.hands.pop(site, None)
        p = session.participant if session is not None else None
        if p is not None:
            p.hand = control.hands.get(site)
        if room is not None:
            at = control.hands.get(site)
            room.broadcast({
                "type": "hand",
                "participant_id": p.id if p else None,
                "site_id": site,
                "name": p.name if p else None,
                "raised": raised,
                "at": None if at is None else int(at * 1000),
            })
            if session is not None:
                room.updated(session)
        if log:
            self._event(meeting_id, "hand_raised" if raised else "hand_lowered", site, by)
        return True

    # ---------------------------------------------------------------- roll call

    def start_roll_call(self, meeting_id: str, room: Optional[Room], control: MeetingControl, by: Optional[str]) -> int:
        if control.roll_call is not None:
            self.storage.end_roll_call(control.roll_call)
        connected = {}
        if room is not None:
            for s in room.sessions.values():
                if s.participant is not None and not s.participant.is_chair:
                    connected[s.participant.site_id] = s.participant.name
        expected = [(sid, name, sid in connected) for sid, name, _ in self.service.expected_sites(meeting_id)]
        listed = {sid for sid, _, _ in expected}
        expected += [(sid, name, True) for sid, name in connected.items() if sid not in listed]
        rc = self.storage.start_roll_call(meeting_id, expected, started_by=by)
        control.roll_call = rc.id
        control.answered = set()
        self._event(meeting_id, "roll_call_start", None, by, {"roll_call_id": rc.id, "expected": len(expected)})
        self.send_roll_call(room, control)
        return rc.id

    def end_roll_call(self, meeting_id: str, room: Optional[Room], control: MeetingControl, by: Optional[str]) -> int:
        rc_id = control.roll_call
        if rc_id is None:
            raise MessageError("no_roll_call", "no roll call is open")
        self.storage.end_roll_call(rc_id)
        control.roll_call = None
        counts = _counts(self.storage.attendance(rc_id))
        self._event(meeting_id, "roll_call_end", None, by, {"roll_call_id": rc_id, **counts})
        self.send_roll_call(room, control, rc_id)
        return rc_id

    def answer_roll_call(self, meeting_id: str, room: Room, session: "Session", roll_call_id: int) -> None:
        control = room.control
        p = session.participant
        assert p is not None
        if control.roll_call is None or control.roll_call != roll_call_id:
            raise MessageError("roll_call_closed", "this roll call is over; the answer was not recorded")
        if self.storage.answer_roll_call(roll_call_id, p.site_id, p.name):
            control.answered.add(p.site_id)
            self._event(meeting_id, "roll_call_answer", p.site_id, None, {"roll_call_id": roll_call_id})
        session.send(self.roll_call_message(room, control, roll_call_id, session))
        self._update_chairs_soon(room)

    def _update_chairs_soon(self, room: Room) -> None:
        if room.meeting_id in self._rc_pending:
            return
        self._rc_pending.add(room.meeting_id)

        def send() -> None:
            self._rc_pending.discard(room.meeting_id)
            if self.service.rooms.get(room.meeting_id) is room and room.control.roll_call is not None:
                self.send_roll_call(room, room.control, chairs_only=True)

        asyncio.get_running_loop().call_later(ROLL_CALL_COALESCE_S, send)

    def joined_during_roll_call(self, room: Room, session: "Session") -> None:
        p = session.participant
        control = room.control
        if control.roll_call is None or p is None or p.is_chair:
            return
        self.storage.mark_roll_call_connected(control.roll_call, p.site_id, p.name)
        self._update_chairs_soon(room)

    def roll_call_message(self, room: Optional[Room], control: MeetingControl, rc_id: Optional[int], session: "Session") -> dict:
        rc = self.storage.get_roll_call(rc_id) if rc_id is not None else None
        if rc is None:
            return {"type": "roll_call", "id": None, "active": False}
        p = session.participant
        msg: dict[str, Any] = {
            "type": "roll_call",
            "id": rc.id,
            "active": rc.active,
            "started_at": int(rc.started_at * 1000),
            "ended_at": None if rc.ended_at is None else int(rc.ended_at * 1000),
            "answered": p is not None and p.site_id in control.answered and rc.active,
        }
        if p is not None and p.is_chair:
            rows = self.storage.attendance(rc.id)
            msg["counts"] = _counts(rows)
            msg["results"] = [
                {"site_id": a.site_id, "name": a.site_name, "status": a.status,
                 "answered_at": None if a.answered_at is None else int(a.answered_at * 1000)}
                for a in rows
            ]
        return msg

    def send_roll_call(self, room: Optional[Room], control: MeetingControl, rc_id: Optional[int] = None, chairs_only: bool = False) -> None:
        if room is None:
            return
        rc_id = rc_id if rc_id is not None else control.roll_call
        targets = room.chairs() if chairs_only else list(room.sessions.values())
        for s in targets:
            s.send(self.roll_call_message(room, control, rc_id, s))


def _ref_or_none(room: Room, site: Optional[str]) -> dict:
    ref = room.site_ref(site)
    return ref if ref is not None else {"participant_id": None, "site_id": None, "name": None}


def _counts(rows: list) -> dict:
    counts = {"present": 0, "no_answer": 0, "absent": 0}
    for a in rows:
        counts[a.status] += 1
    return counts
