"""One WebSocket connection: admission, negotiation and the participant's life in a room.

Every frame is size-checked, rate-limited, decoded and schema-validated before a handler
runs; a bad frame gets an `error` reply and changes nothing. Outgoing messages go through a
bounded queue drained by one writer task, so the media router can notify a session without
awaiting a slow socket, and messages keep their order.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from typing import TYPE_CHECKING, Any, Optional

from aiohttp import WSMsgType, web

from media import OfferError

from .limits import TokenBucket
from .room import KINDS, Participant, Room
from .schema import MAX_MESSAGE_BYTES, PROTOCOL_VERSION, MessageError, validate

if TYPE_CHECKING:
    from .service import SignalingService

from . import service as _service

logger = logging.getLogger(__name__)

JOIN_TIMEOUT = 10.0
OUTBOX_LIMIT = 2000
MESSAGES_PER_SECOND = 20.0
MESSAGE_BURST = 40.0
MAX_REJECTED = 200  # rate-limited messages tolerated before the connection is closed

CLOSE_AUTH = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404
CLOSE_CONFLICT = 4409
CLOSE_PROTOCOL = 4400
CLOSE_RATE = 4429
CLOSE_MEDIA = 4408  # the media connection died on the server's side: rejoin


class Session:
    def __init__(self, service: "SignalingService", ws: web.WebSocketResponse, peer: str) -> None:
        self.service = service
        self.ws = ws
        self.peer = peer
        self.participant: Optional[Participant] = None
        self.room: Optional[Room] = None
        self.transport = None
        self.negotiated = False
        self._negotiating = False
        self._offer_task: Optional[asyncio.Task] = None  # the offer waiting for its turn / being set up
        self._outbox: asyncio.Queue[Optional[tuple]] = asyncio.Queue()
        self._writer: Optional[asyncio.Task] = None
        self._bucket = TokenBucket(MESSAGES_PER_SECOND, MESSAGE_BURST)
        self._rejected = 0
        self._closing = False

    # ---------------------------------------------------------------- outgoing

    def send(self, message: dict) -> None:
        if self._closing:
            return
        if self._outbox.qsize() >= OUTBOX_LIMIT:
            logger.warning("session %s: client is not reading; closing", self.label)
            self.close(CLOSE_PROTOCOL, "client not reading")
            return
        self._outbox.put_nowait(("msg", message))

    def error(self, code: str, message: str, ref: Any = None, fatal: bool = False, close_code: int = CLOSE_PROTOCOL) -> None:
        body = {"type": "error", "code": code, "message": message, "fatal": fatal}
        if ref is not None:
            body["ref"] = ref
        self.send(body)
        if fatal:
            self.close(close_code, code)

    def close(self, code: int = 1000, reason: str = "") -> None:
        if not self._closing:
            self._closing = True
            self._outbox.put_nowait(("close", code, reason))

    async def _write_loop(self) -> None:
        try:
            while True:
                item = await self._outbox.get()
                if item is None:
                    return
                if item[0] == "msg":
                    await self.ws.send_str(json.dumps(item[1], ensure_ascii=False, separators=(",", ":")))
                else:
                    await self.ws.close(code=item[1], message=item[2].encode()[:120])
                    return
        except (ConnectionError, RuntimeError, asyncio.CancelledError):
            pass

    @property
    def label(self) -> str:
        if self.participant is not None:
            return f"{self.participant.site_id}/{self.participant.id}"
        return self.peer

    # ---------------------------------------------------------------- main loop

    async def run(self) -> None:
        self._writer = asyncio.create_task(self._write_loop())
        join_timer = asyncio.get_running_loop().call_later(JOIN_TIMEOUT, self._join_timeout)
        try:
            async for msg in self.ws:
                if msg.type == WSMsgType.TEXT:
                    await self._on_text(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    self.error("bad_message", "binary frames are not part of the protocol; send JSON text")
                elif msg.type == WSMsgType.ERROR:
                    break
                if self._closing:
                    break
        finally:
            join_timer.cancel()
            await self._leave()
            self.close(1000, "")
            if self._writer is not None:
                try:
                    await asyncio.wait_for(self._writer, timeout=2.0)
                except (asyncio.TimeoutError, asyncio.CancelledError):
                    self._writer.cancel()

    def _join_timeout(self) -> None:
        if self.participant is None:
            self.error("auth_missing", f"no join message within {JOIN_TIMEOUT:.0f} s", fatal=True, close_code=CLOSE_AUTH)

    async def _on_text(self, text: str) -> None:
        if len(text) > MAX_MESSAGE_BYTES // 4 and len(text.encode()) > MAX_MESSAGE_BYTES:
            self.error("message_too_large", f"messages are limited to {MAX_MESSAGE_BYTES} bytes")
            return
        if not self._bucket.take():
            self._rejected += 1
            if self._rejected > MAX_REJECTED:
                self.error("rate_limited", "too many messages; connection closed", fatal=True, close_code=CLOSE_RATE)
            elif self._rejected % 20 == 1:
                self.error("rate_limited", f"more than {MESSAGES_PER_SECOND:.0f} messages per second; message ignored")
            return
        ref = None
        try:
            try:
                raw = json.loads(text)
            except (ValueError, RecursionError):
                raise MessageError("bad_json", "the message is not valid JSON") from None
            if isinstance(raw, dict):
                ref = raw.get("id") if isinstance(raw.get("id"), (str, int)) else None
            msg = validate(raw)
            handler = getattr(self, "_on_" + msg["type"])
            await handler(msg)
        except MessageError as exc:
            self.error(exc.code, exc.message, ref=ref)
        except Exception:
            logger.exception("session %s: internal error", self.label)
            self.error("internal", "the server failed to handle this message; it was ignored", ref=ref)

    # ---------------------------------------------------------------- handlers

    async def _on_join(self, msg: dict) -> None:
        if self.participant is not None:
            raise MessageError("already_joined", "this connection has already joined")
        svc = self.service
        ref = msg.get("id")
        verdict = svc.admit(msg["token"])
        if isinstance(verdict, _service.Refusal):
            code, text, close_code = verdict
            logger.info("join refused from %s: %s", self.peer, code)
            self.error(code, text, ref=ref, fatal=True, close_code=close_code)
            return
        claims, meeting = verdict
        room = svc.room_for(meeting)
        control = room.control
        previous = room.by_site(claims.site_id)
        if previous is not None:
            previous.send({"type": "bye", "reason": "replaced"})
            previous.close(CLOSE_CONFLICT, "replaced")
            await previous._leave()
        if len(room.sessions) >= room.max_participants:
            self.error("meeting_full", f"the meeting already has {room.max_participants} participants", ref=ref, fatal=True, close_code=CLOSE_CONFLICT)
            return
        name = msg.get("name") or claims.name or claims.site_id
        p = Participant(id=secrets.token_hex(8), site_id=claims.site_id, name=name, role=claims.role)
        # The chair's decisions about this site outlive its previous connection.
        if control.all_muted and not p.is_chair and p.site_id != control.floor:
            control.set_muted(p.site_id, "audio", True)
        p.chair_muted = {kind: control.is_muted(p.site_id, kind) for kind in KINDS}
        p.hand = control.hands.get(p.site_id)
        control.admitted.add(p.site_id)
        self.participant = p
        self.room = room
        room.add(self)
        svc.event(room.meeting_id, "join", claims.site_id, {"participant_id": p.id, "role": claims.role, "name": name})
        logger.info("site %s joined meeting %s as %s", claims.site_id, room.meeting_id, claims.role)
        reply = {
            "type": "joined",
            "protocol": PROTOCOL_VERSION,
            "participant": p.info(),
            "meeting": {
                "id": room.meeting_id,
                "title": room.title,
                "status": meeting.status,
                "locked": bool(meeting.locked),
                "scheduled_at": None if meeting.scheduled_at is None else int(meeting.scheduled_at * 1000),
            },
            "slots": {"video": svc.media.video_slots, "audio": svc.media.audio_slots},
            "participants": room.others(self),
            "ice_servers": svc.ice_servers_for(claims.site_id),
            "floor": room.site_ref(control.floor),
            "spotlight": room.site_ref(control.spotlight),
            "pins": room.pins_message()["pins"],
            "all_muted": control.all_muted,
            "speaker": room.participant_ref(room.speaker) if room.speaker else None,
        }
        if ref is not None:
            reply["ref"] = ref
        self.send(reply)
        if control.roll_call is not None:
            self.send(svc.chair.roll_call_message(room, control, control.roll_call, self))
            svc.chair.joined_during_roll_call(room, self)

    def _require_joined(self) -> None:
        """Raise not_joined unless this connection is a participant (also after it was removed)."""
        if self.participant is None or self.room is None:
            raise MessageError("not_joined", "send a join message first")

    async def _on_offer(self, msg: dict) -> None:
        self._require_joined()
        if self.negotiated or self._negotiating:
            raise MessageError("renegotiation_unsupported", "one offer per connection; to reconnect, open a new connection and join again")
        self._negotiating = True
        # The media set-up waits for its turn (signaling/joinqueue.py) in its own task, so
        # this connection keeps answering pings and notices a site that gives up waiting.
        self._offer_task = asyncio.get_running_loop().create_task(self._offer(msg))

    async def _offer(self, msg: dict) -> None:
        ref = msg.get("id")
        queue = self.service.join_queue
        try:
            await queue.acquire(lambda place: self.send({"type": "queued", "position": place, **({"ref": ref} if ref is not None else {})}))
        except asyncio.CancelledError:
            self._negotiating = False
            return
        transport = None
        try:
            transport = await self._negotiate(msg)
        except MessageError as exc:
            self.error(exc.code, exc.message, ref=ref)
        except asyncio.CancelledError:
            pass
        except Exception:
            logger.exception("session %s: internal error in offer", self.label)
            self.error("internal", "the server failed to handle this message; it was ignored", ref=ref)
        finally:
            self._negotiating = False
            if transport is None or transport.closed:
                queue.release()
            else:  # keep the turn until its ICE + DTLS are through: handshakes are paced too
                queue.hold_until(transport.connected.wait())

    async def _negotiate(self, msg: dict):
        """Set up this site's media from its offer; returns the transport (None if the site left meanwhile)."""
        if self.participant is None or self.room is None:
            return None
        p = self.participant
        transport = self.room.router.create_transport(p.id, p.site_id, p.name, p.role)
        try:
            answer = await transport.negotiate(msg["sdp"])
        except OfferError as exc:
            if self.room is not None:
                self.room.router.transports.pop(p.id, None)
            await transport.close()
            raise MessageError("sdp_invalid", str(exc)) from None
        if self._closing or self.room is None:
            await transport.close()
            return None
        self.transport = transport
        self.negotiated = True
        transport.on_state = lambda state: self._on_transport_state(transport, state)
        for kind, muted in p.chair_muted.items():
            if muted:
                self.room.router.set_muted(p.id, kind, True)  # before its first packet arrives
        p.publishing = {"audio": "audio" in transport.producers, "video": "video" in transport.producers}
        reply: dict = {"type": "answer", "sdp": answer}
        if msg.get("id") is not None:
            reply["ref"] = msg["id"]
        self.send(reply)
        transport.slots_sent = self.room.router.slots_of(transport)
        self.send({"type": "slots", **transport.slots_sent})
        self.room.updated(self)
        self.room.router.negotiated(transport)
        return transport

    def _on_transport_state(self, transport: Any, state: str) -> None:
        """The server's end of the site's media connection died (ICE consent expired after a
        long outage): tell the site to rejoin instead of leaving it joined without media."""
        if state not in ("failed", "closed") or self.room is None or self.transport is not transport or self._closing:
            return
        logger.info("session %s: media connection %s; asking the site to rejoin", self.label, state)
        self.send({"type": "bye", "reason": "media_failed"})
        self.close(CLOSE_MEDIA, "media connection lost")

    async def _on_media_state(self, msg: dict) -> None:
        self._require_joined()
        assert self.participant is not None and self.room is not None
        self.participant.audio = msg["audio"]
        self.participant.video = msg["video"]
        self.room.updated(self)

    async def _on_ping(self, msg: dict) -> None:
        reply: dict = {"type": "pong", "time": int(time.time() * 1000)}
        if msg.get("id") is not None:
            reply["ref"] = msg["id"]
        self.send(reply)

    async def _on_raise_hand(self, msg: dict) -> None:
        self._require_joined()
        assert self.room is not None and self.participant is not None
        room, p = self.room, self.participant
        self.service.chair.set_hand(room.meeting_id, room, room.control, p.site_id, self, msg["raised"])

    async def _on_roll_call_answer(self, msg: dict) -> None:
        self._require_joined()
        assert self.room is not None
        self.service.chair.answer_roll_call(self.room.meeting_id, self.room, self, msg["roll_call_id"])

    async def _on_chair(self, msg: dict) -> None:
        self._require_joined()
        assert self.room is not None and self.participant is not None
        if not self.participant.is_chair:
            raise MessageError("forbidden", "only the hub or an operator can run the meeting; this link is a site's")
        result = await self.service.chair.act(
            self.room.meeting_id,
            msg["action"],
            participant_id=msg.get("participant_id"),
            site_id=msg.get("site_id"),
            kind=msg.get("kind"),
            by=self.participant.site_id,
        )
        reply = {"type": "chair_done", **result}
        if msg.get("id") is not None:
            reply["ref"] = msg["id"]
        self.send(reply)

    async def _on_leave(self, msg: dict) -> None:
        if self.room is not None and self.participant is not None:
            # leaving on purpose withdraws a request to speak (a dropped link keeps it)
            room = self.room
            self.service.chair.set_hand(room.meeting_id, room, room.control, self.participant.site_id, self, False)
        await self._leave()
        self.close(1000, "left")

    async def _leave(self) -> None:
        if self._offer_task is not None and not self._offer_task.done():
            self._offer_task.cancel()  # gives up its place in the join queue
        room, p = self.room, self.participant
        self.room = None
        if room is None or p is None:
            return
        await room.remove(self)
        self.service.event(room.meeting_id, "leave", p.site_id, {"participant_id": p.id})
        logger.info("site %s left meeting %s", p.site_id, room.meeting_id)
        self.service.room_maybe_empty(room)
