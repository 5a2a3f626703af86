"""Admin REST API for the hub console, and the link check every site can run before joining.

Everything under /api/ answers JSON (CSV where asked). Management endpoints want the hub's
or an operator's join token in `Authorization: Bearer <token>`: the same token the console
page got from its link, so there is no second password to hand out. A hub token manages
every meeting and the site registry; an operator token manages only its own meeting; a
site token gets 403. Errors are `{"error": code, "message": what to do}` with 400/401/403/
404/409/413/429.

The link check (/check page, /api/check/download, /api/check/upload) needs no token, so a
site can test its line days before a big conference. Each request is capped (4 MiB) and
each address has a byte budget, so it cannot be used to load the server.

Times in JSON are Unix milliseconds, as in the signaling protocol.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import time
import unicodedata
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

from aiohttp import web
from jsonschema import Draft202012Validator

from server.auth import AuthError, Claims, TokenService
from server.cli import join_url
from server.storage import SITE_ID_RE, Meeting, SiteImportError, Storage
from signaling.schema import MessageError, validate as validate_message
from signaling.service import SignalingService

WEB_ROOT = Path(__file__).resolve().parent.parent / "web-client"

CHECK_MAX_BYTES = 4 * 1024 * 1024  # one download or upload of the link check
CHECK_BUDGET_BYTES = 48 * 1024 * 1024  # per address, refilled at CHECK_REFILL_BPS
CHECK_REFILL_BPS = 512 * 1024
CHECK_CONCURRENT = 6  # transfers at once, all addresses together
MAX_LINK_TTL_S = 30 * 24 * 3600
EVENT_PAGE = 500


def _error(status: int, code: str, message: str, **headers: str) -> web.HTTPException:
    cls = {400: web.HTTPBadRequest, 401: web.HTTPUnauthorized, 403: web.HTTPForbidden, 404: web.HTTPNotFound,
           409: web.HTTPConflict, 411: web.HTTPLengthRequired, 429: web.HTTPTooManyRequests}.get(status)
    body = {"text": json.dumps({"error": code, "message": message}), "content_type": "application/json",
            "headers": headers or None}
    if cls is None:  # 413's class wants sizes we do not need
        exc = web.HTTPException(**body)
        exc.set_status(status)
        return exc
    return cls(**body)


def _ms(t: Optional[float]) -> Optional[int]:
    return None if t is None else int(t * 1000)


def _schema(props: dict, required: list[str] | None = None) -> Draft202012Validator:
    return Draft202012Validator({"type": "object", "properties": props, "required": required or [], "additionalProperties": False})


_TITLE = {"type": "string", "minLength": 1, "maxLength": 200}
_WHEN = {"type": ["integer", "null"], "minimum": 0}
_DURATION = {"type": ["integer", "null"], "minimum": 1, "maximum": 24 * 60}
_SITE_ID = {"type": "string", "pattern": SITE_ID_RE.pattern}
_SELECTION = {
    "type": "object",
    "properties": {
        "mode": {"enum": ["all", "districts", "list"]},
        "district_ids": {"type": "array", "items": _SITE_ID, "maxItems": 1000},
        "site_ids": {"type": "array", "items": _SITE_ID, "maxItems": 5000},
    },
    "required": ["mode"],
    "additionalProperties": False,
}
CREATE_MEETING = _schema(
    {"id": _SITE_ID, "title": _TITLE, "scheduled_at": _WHEN, "duration_min": _DURATION, "sites": _SELECTION}, ["title"]
)
UPDATE_MEETING = _schema({"title": _TITLE, "scheduled_at": _WHEN, "duration_min": _DURATION, "sites": _SELECTION})
LINKS = _schema({
    "site_ids": {"type": "array", "items": _SITE_ID, "maxItems": 5000},
    "ttl_s": {"type": "integer", "minimum": 60, "maximum": MAX_LINK_TTL_S},
    "hub": {"type": "boolean"},
})


def _check_body(validator: Draft202012Validator, body: Any) -> dict:
    if not isinstance(body, dict):
        raise _error(400, "invalid_request", "the body must be a JSON object")
    errors = sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        where = "/".join(str(p) for p in e.absolute_path) or "(body)"
        raise _error(400, "invalid_request", f"{where}: {e.message[:200]}")
    return body


def slugify(text: str) -> str:
    text = text.replace("đ", "d").replace("Đ", "D")
    text = unicodedata.normalize("NFD", text)
    text = "".join(c for c in text if unicodedata.category(c) != "Mn").lower()
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")[:40].strip("-")


class AdminApi:
    def __init__(self, storage: Storage, tokens: TokenService, signaling: SignalingService, settings: Any = None) -> None:
        self.storage = storage
        self.tokens = tokens
        self.signaling = signaling
        self.settings = settings

    # ---------------------------------------------------------------- auth

    def auth(self, request: web.Request, meeting_id: Optional[str] = None, hub_only: bool = False) -> Claims:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _error(401, "auth_missing", "send the hub's link token in the header 'Authorization: Bearer <token>'",
                         **{"WWW-Authenticate": "Bearer"})
        try:
            claims = self.tokens.verify(token.strip())
        except AuthError as exc:
            text = ("the token has expired; make a new hub link with 'hoinghi token'" if exc.code == "auth_expired"
                    else "the token is not valid; copy the whole hub link again")
            raise _error(401, exc.code, text, **{"WWW-Authenticate": 'Bearer error="invalid_token"'}) from None
        if claims.role == "site":
            raise _error(403, "forbidden", "a site's link cannot manage meetings; use the hub's link")
        if hub_only and claims.role != "hub":
            raise _error(403, "forbidden", "only the hub's link can change the site registry or other meetings")
        if meeting_id is not None and claims.role == "operator" and claims.meeting_id != meeting_id:
            raise _error(403, "forbidden", f"an operator link manages only its own meeting ({claims.meeting_id})")
        return claims

    def meeting(self, request: web.Request, hub_only: bool = False) -> tuple[Meeting, Claims]:
        mid = request.match_info["id"]
        claims = self.auth(request, meeting_id=mid, hub_only=hub_only)
        meeting = self.storage.get_meeting(mid)
        if meeting is None:
            raise _error(404, "meeting_not_found", f"meeting {mid!r} does not exist")
        return meeting, claims

    @staticmethod
    async def body(request: web.Request) -> Any:
        try:
            return await request.json()
        except (ValueError, UnicodeDecodeError):
            raise _error(400, "bad_json", "the body is not valid JSON") from None

    # ---------------------------------------------------------------- representation

    def meeting_json(self, m: Meeting, detail: bool = False) -> dict:
        invited = self.storage.meeting_site_ids(m.id)
        room = self.signaling.rooms.get(m.id)
        control = self.signaling.controls.get(m.id)
        sites = [s for s in room.sessions.values() if s.participant and not s.participant.is_chair] if room else []
        out: dict[str, Any] = {
            "id": m.id,
            "title": m.title,
            "status": m.status,
            "locked": m.locked,
            "created_at": _ms(m.created_at),
            "scheduled_at": _ms(m.scheduled_at),
            "duration_min": m.duration_min,
            "started_at": _ms(m.started_at),
            "ended_at": _ms(m.ended_at),
            "sites": {"mode": "list" if invited else "all", "count": len(invited) if invited else len(self.signaling.expected_sites(m.id))},
            "connected": len(sites),
            "roll_call": control.roll_call if control else None,
        }
        if detail:
            out["sites"]["site_ids"] = invited
        return out

    def selection_ids(self, selection: dict) -> list[str]:
        mode = selection["mode"]
        if mode == "all":
            return []
        sites = {s.id: s for s in self.storage.list_sites()}
        if mode == "list":
            ids = selection.get("site_ids") or []
            unknown = [s for s in ids if s not in sites]
            if unknown:
                raise _error(400, "unknown_sites", f"not in the site registry: {', '.join(unknown[:20])}")
            if not ids:
                raise _error(400, "invalid_request", "choose at least one site, or mode 'all'")
            return ids
        districts = selection.get("district_ids") or []
        bad = [d for d in districts if d not in sites or sites[d].level != "district"]
        if bad or not districts:
            raise _error(400, "unknown_sites", f"not districts of the registry: {', '.join(bad[:20]) or '(none chosen)'}")
        chosen = set(districts)
        return [s.id for s in sites.values() if s.id in chosen or s.parent_id in chosen]

    # ---------------------------------------------------------------- handlers: identity, sites

    async def me(self, request: web.Request) -> web.Response:
        c = self.auth(request)
        return web.json_response({"site_id": c.site_id, "meeting_id": c.meeting_id, "role": c.role, "name": c.name,
                                  "expires_at": _ms(c.expires_at)})

    async def list_sites(self, request: web.Request) -> web.Response:
        self.auth(request)
        if request.query.get("format") == "csv":
            return _csv_response(self.storage.sites_csv(), "sites.csv")
        return web.json_response({"sites": [
            {"id": s.id, "name": s.name, "level": s.level, "parent_id": s.parent_id} for s in self.storage.list_sites()
        ]})

    async def import_sites(self, request: web.Request) -> web.Response:
        self.auth(request, hub_only=True)
        replace = request.query.get("replace") in ("1", "true", "yes")
        if request.query.get("sample") in ("1", "true", "yes"):
            counts = self.storage.load_sample_sites(replace=replace)
        else:
            raw = await request.read()
            try:
                text = raw.decode("utf-8-sig")
            except UnicodeDecodeError:
                raise _error(400, "not_utf8", "the file is not UTF-8 text; in Excel choose 'Save as: CSV UTF-8'") from None
            try:
                counts = self.storage.import_sites_csv(text, replace=replace)
            except SiteImportError as exc:
                body = {"error": "invalid_csv", "message": "nothing was imported; correct these lines and try again",
                        "errors": exc.errors[:100]}
                raise web.HTTPBadRequest(text=json.dumps(body, ensure_ascii=False), content_type="application/json") from None
        return web.json_response(counts)

    # ---------------------------------------------------------------- handlers: meetings

    async def list_meetings(self, request: web.Request) -> web.Response:
        claims = self.auth(request)
        meetings = self.storage.list_meetings()
        if claims.role == "operator":
            meetings = [m for m in meetings if m.id == claims.meeting_id]
        return web.json_response({"meetings": [self.meeting_json(m) for m in meetings]})

    async def create_meeting(self, request: web.Request) -> web.Response:
        claims = self.auth(request, hub_only=True)
        body = _check_body(CREATE_MEETING, await self.body(request))
        ids = self.selection_ids(body["sites"]) if "sites" in body else []
        mid = body.get("id") or self._new_id(body["title"], body.get("scheduled_at"))
        try:
            m = self.storage.create_meeting(mid, body["title"], _sec(body.get("scheduled_at")), body.get("duration_min"))
        except ValueError:
            raise _error(409, "meeting_exists", f"a meeting with id {mid!r} already exists; choose another id") from None
        if ids:
            self.storage.set_meeting_sites(mid, ids)
        self.signaling.event(mid, "meeting_created", claims.site_id, {"title": m.title, "sites": len(ids) or "all"})
        return web.json_response(self.meeting_json(self.storage.get_meeting(mid) or m, detail=True), status=201)

    def _new_id(self, title: str, scheduled_ms: Optional[int]) -> str:
        day = time.strftime("%Y-%m-%d", time.localtime(scheduled_ms / 1000 if scheduled_ms else time.time()))
        base = f"{day}-{slugify(title) or 'hop'}"
        mid, n = base, 2
        while self.storage.get_meeting(mid) is not None:
            mid, n = f"{base}-{n}", n + 1
        return mid

    async def get_meeting(self, request: web.Request) -> web.Response:
        m, _ = self.meeting(request)
        return web.json_response(self.meeting_json(m, detail=True))

    async def update_meeting(self, request: web.Request) -> web.Response:
        m, claims = self.meeting(request)
        body = _check_body(UPDATE_MEETING, await self.body(request))
        fields = {k: body[k] for k in ("title", "duration_min") if k in body}
        if "scheduled_at" in body:
            fields["scheduled_at"] = _sec(body["scheduled_at"])
        if fields:
            self.storage.update_meeting(m.id, **fields)
            if "title" in fields:
                room = self.signaling.rooms.get(m.id)
                if room is not None:
                    room.title = fields["title"]
        if "sites" in body:
            self.storage.set_meeting_sites(m.id, self.selection_ids(body["sites"]))
        changed = sorted(body)
        if changed:
            self.signaling.event(m.id, "meeting_updated", claims.site_id, {"fields": changed})
        return web.json_response(self.meeting_json(self.storage.get_meeting(m.id) or m, detail=True))

    async def delete_meeting(self, request: web.Request) -> web.Response:
        m, _ = self.meeting(request, hub_only=True)
        room = self.signaling.rooms.get(m.id)
        if room is not None and not room.empty:
            raise _error(409, "meeting_in_use", "sites are still connected; end the meeting first")
        self.storage.delete_meeting(m.id)
        self.signaling.controls.pop(m.id, None)
        return web.json_response({"deleted": m.id})

    async def set_sites(self, request: web.Request) -> web.Response:
        m, claims = self.meeting(request)
        body = _check_body(_schema({"sites": _SELECTION}, ["sites"]), await self.body(request))
        ids = self.selection_ids(body["sites"])
        self.storage.set_meeting_sites(m.id, ids)
        self.signaling.event(m.id, "sites_selected", claims.site_id, {"mode": body["sites"]["mode"], "count": len(ids)})
        return web.json_response(self.meeting_json(m, detail=True))

    async def _act(self, request: web.Request, action: str, **target: Any) -> web.Response:
        m, claims = self.meeting(request)
        try:
            result = await self.signaling.chair.act(m.id, action, by=claims.site_id, **target)
        except MessageError as exc:
            status = {"not_found": 404, "meeting_not_found": 404, "meeting_ended": 409, "no_roll_call": 409}.get(exc.code, 400)
            raise _error(status, exc.code, exc.message) from None
        return web.json_response({**result, "meeting": self.meeting_json(self.storage.get_meeting(m.id) or m)})

    async def start(self, request: web.Request) -> web.Response:
        return await self._act(request, "start")

    async def end(self, request: web.Request) -> web.Response:
        return await self._act(request, "end")

    async def action(self, request: web.Request) -> web.Response:
        self.meeting(request)  # auth first, then the body
        body = await self.body(request)
        if not isinstance(body, dict):
            raise _error(400, "invalid_request", "the body must be a JSON object")
        try:
            msg = validate_message({**body, "type": "chair"})
        except MessageError as exc:
            raise _error(400, "invalid_request", exc.message.removeprefix("chair: ")) from None
        target = {k: msg[k] for k in ("participant_id", "site_id", "kind") if k in msg}
        return await self._act(request, msg["action"], **target)

    # ---------------------------------------------------------------- links

    async def links(self, request: web.Request) -> web.Response:
        m, claims = self.meeting(request)
        if m.status == "ended":
            raise _error(409, "meeting_ended", "the meeting has ended; start it again before handing out links")
        body = _check_body(LINKS, await self.body(request)) if request.can_read_body else {}
        registry = {s.id: s for s in self.storage.list_sites()}
        expected = {sid: (name, parent) for sid, name, parent in self.signaling.expected_sites(m.id)}
        wanted = body.get("site_ids")
        if wanted is None:
            wanted = list(expected)
        else:
            refused = [s for s in wanted if not self.storage.site_may_join(m.id, s)]
            if refused:
                raise _error(400, "not_invited", f"not on this meeting's list: {', '.join(refused[:20])}")
        ttl = body.get("ttl_s") or self._ttl(m)
        base = self._link_settings(request)
        out = []
        for sid in wanted:
            site = registry.get(sid)
            name = site.name if site else expected.get(sid, (sid, None))[0]
            district = district_of(sid, registry)
            role = "hub" if site is not None and site.level == "province" else "site"
            token = self.tokens.issue(m.id, sid, role, ttl, name=name)
            out.append({"site_id": sid, "name": name, "district_id": district,
                        "district": registry[district].name if district else None,
                        "role": role, "url": join_url(base, role, token)})
        result: dict[str, Any] = {"meeting_id": m.id, "expires_at": _ms(time.time() + ttl), "links": out}
        if body.get("hub"):
            hub_site = claims.site_id
            name = registry[hub_site].name if hub_site in registry else (claims.name or hub_site)
            token = self.tokens.issue(m.id, hub_site, claims.role, ttl, name=name)
            result["hub"] = {"site_id": hub_site, "url": join_url(base, "hub", token)}
        self.signaling.event(m.id, "links_issued", claims.site_id, {"count": len(out)})
        if request.query.get("format") == "csv":
            buf = io.StringIO()
            w = csv.writer(buf, lineterminator="\r\n")
            w.writerow(["site_id", "name", "district", "url"])
            for x in out:
                w.writerow([x["site_id"], x["name"], x["district"] or "", x["url"]])
            return _csv_response(buf.getvalue(), f"links-{m.id}.csv")
        return web.json_response(result)

    def _ttl(self, m: Meeting) -> int:
        ttl = int(getattr(self.settings, "token_ttl_s", 8 * 3600))
        if m.scheduled_at:
            until_end = m.scheduled_at + (m.duration_min or 240) * 60 + 2 * 3600 - time.time()
            ttl = max(ttl, int(until_end))
        return max(60, min(ttl, MAX_LINK_TTL_S))

    def _link_settings(self, request: web.Request) -> Any:
        """What server.cli.join_url needs: the configured public URL, else this request's origin."""
        if self.settings is not None and self.settings.public_url:
            return self.settings
        return SimpleNamespace(join_base_url=f"{request.scheme}://{request.host}")

    # ---------------------------------------------------------------- roster, log, attendance

    async def roster(self, request: web.Request) -> web.Response:
        m, _ = self.meeting(request)
        registry = {s.id: s for s in self.storage.list_sites()}
        room = self.signaling.rooms.get(m.id)
        control = self.signaling.controls.get(m.id)
        live = {}
        if room is not None:
            for s in room.sessions.values():
                if s.participant is not None:
                    live[s.participant.site_id] = s.participant
        stats = room.last_summaries if room is not None else {}
        groups: dict[Optional[str], list] = {}
        expected = self.signaling.expected_sites(m.id)
        seen = set()
        for sid, name, _ in expected + [(sid, p.name, None) for sid, p in live.items()]:
            if sid in seen:
                continue
            seen.add(sid)
            p = live.get(sid)
            entry: dict[str, Any] = {"site_id": sid, "name": p.name if p else name, "joined": p is not None,
                                     "level": registry[sid].level if sid in registry else None}
            if p is not None:
                entry.update({"participant_id": p.id, "role": p.role, "audio": p.audio, "video": p.video,
                              "hand": _ms(p.hand), "chair_muted": dict(p.chair_muted), "link": stats.get(p.id)})
            groups.setdefault(district_of(sid, registry), []).append(entry)
        out_groups = [
            {"district": {"id": d, "name": registry[d].name} if d else None, "sites": sites}
            for d, sites in sorted(groups.items(), key=lambda kv: (kv[0] is None, registry[kv[0]].name if kv[0] else ""))
        ]
        sites_only = [e for g in out_groups for e in g["sites"] if e.get("role", "site") == "site"]
        return web.json_response({
            "meeting": self.meeting_json(m),
            "counts": {"expected": len(expected), "joined": sum(1 for e in sites_only if e["joined"]),
                       "hands": len(control.hands) if control else 0},
            "floor": control.floor if control else None,
            "spotlight": control.spotlight if control else None,
            "all_muted": control.all_muted if control else False,
            "hands": sorted(control.hands, key=control.hands.get) if control else [],
            "groups": out_groups,
        })

    async def events(self, request: web.Request) -> web.Response:
        m, _ = self.meeting(request)
        try:
            after = int(request.query.get("after", "0"))
            limit = min(EVENT_PAGE, max(1, int(request.query.get("limit", str(EVENT_PAGE)))))
        except ValueError:
            raise _error(400, "invalid_request", "after and limit must be whole numbers") from None
        names = {s.id: s.name for s in self.storage.list_sites()}
        events = self.storage.list_events_after(m.id, after, limit)
        return web.json_response({
            "events": [{"id": e.id, "ts": _ms(e.ts), "kind": e.kind, "site_id": e.site_id,
                        "site_name": names.get(e.site_id or "") or _event_name(e), "data": e.data} for e in events],
            "last_id": events[-1].id if events else after,
        })

    def attendance_rows(self, m: Meeting) -> tuple[list[dict], list[Any]]:
        """Per site: first join, last leave, minutes connected, answer to each roll call."""
        registry = {s.id: s for s in self.storage.list_sites()}
        roll_calls = self.storage.list_roll_calls(m.id)
        answers = {rc.id: {a.site_id: a for a in self.storage.attendance(rc.id)} for rc in roll_calls}
        sessions: dict[str, dict] = {}  # site -> {first, last_leave, seconds, open: {pid: start}}
        chairs: set[str] = set()
        end_of_meeting = m.ended_at or time.time()
        for e in self._all_events(m.id):
            if e.kind not in ("join", "leave") or not e.site_id:
                continue
            data = e.data if isinstance(e.data, dict) else {}
            if e.kind == "join" and data.get("role") in ("hub", "operator"):
                chairs.add(e.site_id)
            st = sessions.setdefault(e.site_id, {"first": None, "last": None, "seconds": 0.0, "open": {}, "name": None})
            pid = data.get("participant_id")
            if e.kind == "join":
                st["first"] = st["first"] or e.ts
                st["open"][pid] = e.ts
                st["name"] = data.get("name") or st["name"]
            elif pid in st["open"]:
                st["seconds"] += e.ts - st["open"].pop(pid)
                st["last"] = e.ts
        expected = self.signaling.expected_sites(m.id)
        order = [sid for sid, _, _ in expected]
        order += sorted(s for s in sessions if s not in order and s not in chairs)
        for rc_rows in answers.values():
            order += sorted(s for s in rc_rows if s not in order)
        rows = []
        for sid in order:
            st = sessions.get(sid)
            site = registry.get(sid)
            seconds = 0.0
            if st:
                seconds = st["seconds"] + sum(end_of_meeting - t for t in st["open"].values())
            district = district_of(sid, registry)
            rows.append({
                "site_id": sid,
                "name": site.name if site else ((st or {}).get("name") or sid),
                "district": registry[district].name if district else "",
                "first_join": _ms(st["first"]) if st else None,
                "last_leave": None if (not st or st["open"]) else _ms(st["last"]),
                "connected_now": bool(st and st["open"]) and m.status != "ended",
                "minutes": round(seconds / 60, 1),
                "roll_calls": [
                    {"id": rc.id, "status": answers[rc.id][sid].status if sid in answers[rc.id] else "absent",
                     "answered_at": _ms(answers[rc.id][sid].answered_at) if sid in answers[rc.id] else None}
                    for rc in roll_calls
                ],
            })
        return rows, roll_calls

    def _all_events(self, meeting_id: str) -> list[Any]:
        out, after = [], 0
        while True:
            page = self.storage.list_events_after(meeting_id, after, 5000)
            out += page
            if len(page) < 5000:
                return out
            after = page[-1].id

    async def attendance(self, request: web.Request) -> web.Response:
        m, _ = self.meeting(request)
        rows, roll_calls = self.attendance_rows(m)
        if request.query.get("format") == "csv" or request.path.endswith(".csv"):
            return _csv_response(_attendance_csv(m, rows, roll_calls, request.query.get("lang", "vi")), f"diem-danh-{m.id}.csv")
        summaries = []
        for rc in roll_calls:
            counts = {"present": 0, "no_answer": 0, "absent": 0}
            for r in rows:
                for x in r["roll_calls"]:
                    if x["id"] == rc.id:
                        counts[x["status"]] += 1
            summaries.append({"id": rc.id, "started_at": _ms(rc.started_at), "ended_at": _ms(rc.ended_at),
                              "active": rc.active, "counts": counts})
        return web.json_response({"meeting_id": m.id, "roll_calls": summaries, "sites": rows})


def district_of(site_id: str, registry: dict) -> Optional[str]:
    """The district a site belongs to: itself for a district, its parent for a commune."""
    site = registry.get(site_id)
    while site is not None and site.level != "district":
        site = registry.get(site.parent_id) if site.parent_id else None
    return site.id if site is not None else None


def _event_name(e: Any) -> Optional[str]:
    return e.data.get("name") if isinstance(e.data, dict) else None


def _sec(ms: Optional[int]) -> Optional[float]:
    return None if ms is None else ms / 1000.0


def _csv_response(text: str, filename: str) -> web.Response:
    # BOM: Excel opens UTF-8 (Vietnamese) text correctly only with it
    return web.Response(
        body=("\ufeff" + text).encode("utf-8"),
        content_type="text/csv",
        charset="utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"', "Cache-Control": "no-store"},
    )


_CSV_WORDS = {
    "vi": {"site_id": "Mã điểm cầu", "name": "Tên điểm cầu", "district": "Huyện/thành phố", "first_join": "Vào họp lúc",
           "last_leave": "Rời họp lúc", "minutes": "Số phút trong cuộc họp", "roll_call": "Điểm danh lần {n} ({time})",
           "present": "Có mặt", "no_answer": "Không trả lời", "absent": "Vắng", "still": "đang họp"},
    "en": {"site_id": "Site ID", "name": "Site name", "district": "District", "first_join": "First joined",
           "last_leave": "Left at", "minutes": "Minutes in the meeting", "roll_call": "Roll call {n} ({time})",
           "present": "Present", "no_answer": "No answer", "absent": "Absent", "still": "still in"},
}


def _attendance_csv(m: Meeting, rows: list[dict], roll_calls: list[Any], lang: str) -> str:
    w_ = _CSV_WORDS.get(lang, _CSV_WORDS["vi"])

    def when(ms: Optional[int], fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
        return "" if ms is None else time.strftime(fmt, time.localtime(ms / 1000))

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow([w_["site_id"], w_["name"], w_["district"], w_["first_join"], w_["last_leave"], w_["minutes"]]
               + [w_["roll_call"].format(n=i + 1, time=when(_ms(rc.started_at), "%H:%M")) for i, rc in enumerate(roll_calls)])
    for r in rows:
        cells = [r["site_id"], r["name"], r["district"], when(r["first_join"]),
                 w_["still"] if r["connected_now"] else when(r["last_leave"]), f'{r["minutes"]:g}']
        for x in r["roll_calls"]:
            cells.append(w_[x["status"]] + (f' {when(x["answered_at"], "%H:%M:%S")}' if x["answered_at"] else ""))
        w.writerow(cells)
    return buf.getvalue()


# -------------------------------------------------------------------- link check


class LinkCheck:
    """Download/upload of bounded size for the pre-join link check; a byte budget per address."""

    def __init__(self) -> None:
        self._payload = os.urandom(CHECK_MAX_BYTES)  # incompressible, so no proxy can shrink it
        self._budget: dict[str, tuple[float, float]] = {}  # address -> (bytes left, stamp)
        self._active = 0

    def _take(self, request: web.Request, n: int) -> None:
        addr = request.remote or "?"
        now = time.monotonic()
        left, stamp = self._budget.get(addr, (float(CHECK_BUDGET_BYTES), now))
        left = min(float(CHECK_BUDGET_BYTES), left + (now - stamp) * CHECK_REFILL_BPS)
        if left < n or self._active >= CHECK_CONCURRENT:
            wait = max(1, int((n - left) / CHECK_REFILL_BPS) + 1) if left < n else 5
            raise _error(429, "rate_limited", f"too many link checks right now; try again in {wait} s", **{"Retry-After": str(wait)})
        self._budget[addr] = (left - n, now)
        if len(self._budget) > 10_000:  # forget the oldest addresses
            for key in sorted(self._budget, key=lambda k: self._budget[k][1])[:5000]:
                del self._budget[key]

    @staticmethod
    def _size(text: Optional[str]) -> int:
        try:
            n = int(text or "")
        except ValueError:
            n = -1
        if not 1 <= n <= CHECK_MAX_BYTES:
            raise _error(400, "invalid_request", f"bytes must be a whole number from 1 to {CHECK_MAX_BYTES}")
        return n

    async def download(self, request: web.Request) -> web.StreamResponse:
        n = self._size(request.query.get("bytes"))
        self._take(request, n)
        self._active += 1
        try:
            resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream", "Cache-Control": "no-store",
                                               "Content-Length": str(n)})
            await resp.prepare(request)
            view = memoryview(self._payload)
            for off in range(0, n, 256 * 1024):
                await resp.write(view[off:min(n, off + 256 * 1024)])
            await resp.write_eof()
            return resp
        finally:
            self._active -= 1

    async def upload(self, request: web.Request) -> web.Response:
        if request.content_length is None:
            raise _error(411, "length_required", "send the test data with a Content-Length header")
        if request.content_length > CHECK_MAX_BYTES:
            raise _error(413, "too_large", f"send at most {CHECK_MAX_BYTES} bytes")
        self._take(request, max(1, request.content_length))
        self._active += 1
        start = time.monotonic()
        try:
            got = 0
            async for chunk in request.content.iter_chunked(64 * 1024):
                got += len(chunk)
                if got > CHECK_MAX_BYTES:
                    raise _error(413, "too_large", f"send at most {CHECK_MAX_BYTES} bytes")
        finally:
            self._active -= 1
        return web.json_response({"bytes": got, "ms": round((time.monotonic() - start) * 1000, 1)},
                                 headers={"Cache-Control": "no-store"})


# -------------------------------------------------------------------- wiring


def _page(name: str):
    async def handler(request: web.Request) -> web.FileResponse:
        return web.FileResponse(WEB_ROOT / name, headers={"Cache-Control": "no-cache"})

    return handler


def setup_routes(app: web.Application, storage: Storage, tokens: TokenService, signaling: SignalingService, settings: Any = None) -> AdminApi:
    """Mount the admin API, the link check and the /check page. `settings` (optional)
    gives the public base URL of join links; without it links use the request's host."""
    api = AdminApi(storage, tokens, signaling, settings)
    check = LinkCheck()
    r = app.router
    r.add_get("/check", _page("check.html"))
    r.add_get("/api/check/download", check.download)
    r.add_post("/api/check/upload", check.upload)
    r.add_get("/api/me", api.me)
    r.add_get("/api/sites", api.list_sites)
    r.add_post("/api/sites/import", api.import_sites)
    r.add_get("/api/meetings", api.list_meetings)
    r.add_post("/api/meetings", api.create_meeting)
    r.add_get("/api/meetings/{id}", api.get_meeting)
    r.add_patch("/api/meetings/{id}", api.update_meeting)
    r.add_delete("/api/meetings/{id}", api.delete_meeting)
    r.add_put("/api/meetings/{id}/sites", api.set_sites)
    r.add_post("/api/meetings/{id}/start", api.start)
    r.add_post("/api/meetings/{id}/end", api.end)
    r.add_post("/api/meetings/{id}/actions", api.action)
    r.add_post("/api/meetings/{id}/links", api.links)
    r.add_get("/api/meetings/{id}/roster", api.roster)
    r.add_get("/api/meetings/{id}/events", api.events)
    r.add_get("/api/meetings/{id}/attendance", api.attendance)
    r.add_get("/api/meetings/{id}/attendance.csv", api.attendance)
    return api
