"""Meeting recordings (biên bản): started and stopped from the console, listed, downloaded.

    POST /api/meetings/{id}/recording   {"action": "start" | "stop"}
    GET  /api/meetings/{id}/recordings  the meeting's recordings, newest first
    GET  /api/recordings/{rec_id}/file  the WebM file (Content-Disposition: attachment)

Every request carries `Authorization: Bearer <token>`: a hub or operator token of that
meeting (a site token gets 403). The token is never put in a URL (URLs reach access logs),
so the console downloads with fetch() and saves the blob.

Files live under `<data_dir>/recordings/<meeting>/<UTC timestamp>.webm`; the `recordings`
table (created here with CREATE TABLE IF NOT EXISTS on the Storage's connection, outside its
migration list) keeps them with the meeting: path relative to the data directory, start and
stop time, size, duration, video frames. A recording still open when the server died is
marked stopped at the next start ("interrupted": the file is readable up to where it ended,
without duration or cues). What is recorded: see media/recorder.py (the floor's video and
audio, remuxed, never re-encoded).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from aiohttp import web

from media.recorder import MeetingRecorder
from server.auth import AuthError

logger = logging.getLogger(__name__)

RECORDINGS_DIR = "recordings"
RECORDING_ROLES = ("hub", "operator")
ROOM_GONE_STOP_S = 300.0  # a recording whose meeting has had nobody connected this long is stopped
WATCH_INTERVAL = 5.0

_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS recordings (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        meeting_id TEXT NOT NULL REFERENCES meetings(id) ON DELETE CASCADE,
        path       TEXT NOT NULL,
        started_at REAL NOT NULL,
        stopped_at REAL NULL,
        bytes      INTEGER NOT NULL DEFAULT 0,
        duration_s REAL NULL,
        frames     INTEGER NOT NULL DEFAULT 0
    )
    """,
    "CREATE INDEX IF NOT EXISTS recordings_by_meeting ON recordings (meeting_id, id)",
)

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def safe_component(meeting_id: str) -> str:
    """A directory/file name for a meeting id: the id itself when harmless, else a hash."""
    if _SAFE.match(meeting_id) and ".." not in meeting_id:
        return meeting_id
    return "m-" + hashlib.sha256(meeting_id.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class Recording:
    id: int
    meeting_id: str
    path: str  # relative to the data directory
    started_at: float
    stopped_at: Optional[float]
    bytes: int
    duration_s: Optional[float]
    frames: int


class RecordingStore:
    """The `recordings` table on the Storage's SQLite connection (same thread, same file)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        for statement in _SCHEMA:
            conn.execute(statement)

    def add(self, meeting_id: str, path: str, started_at: float) -> int:
        cur = self._conn.execute(
            "INSERT INTO recordings (meeting_id, path, started_at) VALUES (?, ?, ?)", (meeting_id, path, started_at)
        )
        return int(cur.lastrowid or 0)

    def finish(self, rec_id: int, stopped_at: float, size: int, duration_s: Optional[float], frames: int) -> None:
        self._conn.execute(
            "UPDATE recordings SET stopped_at = ?, bytes = ?, duration_s = ?, frames = ? WHERE id = ?",
            (stopped_at, size, duration_s, frames, rec_id),
        )

    def get(self, rec_id: int) -> Optional[Recording]:
        row = self._conn.execute("SELECT * FROM recordings WHERE id = ?", (rec_id,)).fetchone()
        return _recording(row) if row else None

    def for_meeting(self, meeting_id: str) -> list[Recording]:
        rows = self._conn.execute(
            "SELECT * FROM recordings WHERE meeting_id = ? ORDER BY id DESC", (meeting_id,)
        ).fetchall()
        return [_recording(r) for r in rows]

    def unfinished(self) -> list[Recording]:
        rows = self._conn.execute("SELECT * FROM recordings WHERE stopped_at IS NULL").fetchall()
        return [_recording(r) for r in rows]


def _recording(row: Any) -> Recording:
    return Recording(
        id=int(row[0]), meeting_id=row[1], path=row[2], started_at=float(row[3]),
        stopped_at=None if row[4] is None else float(row[4]), bytes=int(row[5]),
        duration_s=None if row[6] is None else float(row[6]), frames=int(row[7]),
    )


class _ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def response(self) -> web.Response:
        headers = {"WWW-Authenticate": 'Bearer realm="hoinghi"'} if self.status == 401 else None
        return web.json_response({"error": self.code, "message": self.message}, status=self.status, headers=headers)


@dataclass
class _Active:
    rec_id: int
    recorder: MeetingRecorder
    room_gone_since: float = 0.0


class RecordingService:
    def __init__(self, storage: Any, tokens: Any, signaling: Any, data_dir: Path) -> None:
        self.storage = storage
        self.tokens = tokens
        self.signaling = signaling
        self.data_dir = Path(data_dir)
        self.store = RecordingStore(_connection(storage))
        self.active: dict[str, _Active] = {}
        self._watcher: Optional[asyncio.Task] = None
        self._close_interrupted()

    def _close_interrupted(self) -> None:
        for rec in self.store.unfinished():
            path = self.data_dir / rec.path
            try:
                st = path.stat()
                size, stopped = st.st_size, st.st_mtime
            except OSError:
                size, stopped = 0, rec.started_at
            self.store.finish(rec.id, max(stopped, rec.started_at), size, None, rec.frames)
            logger.warning("recording %d of meeting %s was interrupted (server stopped while recording)",
                           rec.id, rec.meeting_id)

    # ---------------------------------------------------------------- recording control

    def _router_of(self, meeting_id: str):
        def get():
            room = self.signaling.rooms.get(meeting_id)
            return room.router if room is not None else None

        return get

    async def start(self, meeting_id: str, by: Optional[str] = None) -> dict:
        meeting = self.storage.get_meeting(meeting_id)
        if meeting is None:
            raise _ApiError(404, "meeting_not_found", f"meeting {meeting_id!r} does not exist")
        if meeting_id in self.active:
            raise _ApiError(409, "already_recording", "this meeting is already being recorded")
        if self.signaling.rooms.get(meeting_id) is None:
            raise _ApiError(409, "meeting_not_live", "nobody is connected to this meeting; start recording once it is live")
        started = time.time()
        folder = self.data_dir / RECORDINGS_DIR / safe_component(meeting_id)
        folder.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started))
        path = folder / f"{stamp}.webm"
        n = 1
        while path.exists():
            n += 1
            path = folder / f"{stamp}-{n}.webm"
        metadata = {
            "title": str(getattr(meeting, "title", meeting_id)),
            "comment": f"hoinghi meeting {meeting_id}",
            "creation_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        }
        pool = getattr(self.signaling, "media_pool", None)
        if pool is not None:  # media in worker processes: one of them records
            recorder: Any = pool.recorder(meeting_id, path, metadata=metadata)
        else:
            recorder = MeetingRecorder(self._router_of(meeting_id), path, metadata=metadata)
        rel = path.relative_to(self.data_dir).as_posix()
        rec_id = self.store.add(meeting_id, rel, started)
        self.active[meeting_id] = _Active(rec_id, recorder)
        await recorder.start()
        self._event(meeting_id, "recording_started", by, {"recording_id": rec_id, "file": path.name})
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.ensure_future(self._watch())
        logger.info("recording %d of meeting %s started: %s", rec_id, meeting_id, rel)
        return self.describe(self.store.get(rec_id))  # type: ignore[arg-type]

    async def stop(self, meeting_id: str, by: Optional[str] = None) -> dict:
        active = self.active.pop(meeting_id, None)
        if active is None:
            raise _ApiError(409, "not_recording", "this meeting is not being recorded")
        result = await active.recorder.stop()
        self.store.finish(active.rec_id, result.stopped_at, result.bytes, result.duration_s, result.video_frames)
        summary = {
            "recording_id": active.rec_id, "bytes": result.bytes, "duration_s": result.duration_s,
            "frames": result.video_frames, "dropped": result.dropped, "error": result.error,
        }
        self._event(meeting_id, "recording_stopped", by, summary)
        if result.error:
            logger.error("recording %d of meeting %s ended with an error: %s", active.rec_id, meeting_id, result.error)
        else:
            logger.info("recording %d of meeting %s stopped: %.1f s, %d frames, %d bytes",
                        active.rec_id, meeting_id, result.duration_s, result.video_frames, result.bytes)
        out = self.describe(self.store.get(active.rec_id))  # type: ignore[arg-type]
        out["dropped"] = result.dropped
        out["error"] = result.error
        return out

    async def shutdown(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        for meeting_id in list(self.active):
            try:
                await self.stop(meeting_id, by=None)
            except Exception:
                logger.exception("could not finish the recording of meeting %s", meeting_id)

    async def _watch(self) -> None:
        """Stop recordings of meetings that have been empty for ROOM_GONE_STOP_S."""
        while self.active:
            await asyncio.sleep(WATCH_INTERVAL)
            now = time.monotonic()
            for meeting_id, active in list(self.active.items()):
                if self.signaling.rooms.get(meeting_id) is not None:
                    active.room_gone_since = 0.0
                elif not active.room_gone_since:
                    active.room_gone_since = now
                elif now - active.room_gone_since > ROOM_GONE_STOP_S and self.active.get(meeting_id) is active:
                    logger.info("meeting %s has been empty for %.0f s: stopping its recording", meeting_id, ROOM_GONE_STOP_S)
                    try:
                        await self.stop(meeting_id)
                    except _ApiError:
                        pass

    def _event(self, meeting_id: str, kind: str, site_id: Optional[str], data: dict) -> None:
        try:
            self.storage.add_event(meeting_id, kind, site_id, data)
        except Exception:
            logger.exception("could not log %s for meeting %s", kind, meeting_id)

    # ---------------------------------------------------------------- views

    def describe(self, rec: Recording) -> dict:
        active = self.active.get(rec.meeting_id)
        live = active is not None and active.rec_id == rec.id
        if live:
            state = "recording"
        elif rec.duration_s is None:
            state = "interrupted"
        else:
            state = "complete"
        out: dict[str, Any] = {
            "id": rec.id,
            "meeting_id": rec.meeting_id,
            "state": state,
            "started_at": rec.started_at,
            "stopped_at": rec.stopped_at,
            "bytes": rec.bytes,
            "duration_s": rec.duration_s,
            "frames": rec.frames,
            "filename": download_name(rec),
            "file": f"/api/recordings/{rec.id}/file",
        }
        if live:
            stats = active.recorder.stats()  # type: ignore[union-attr]
            out["live"] = {k: stats[k] for k in ("subject", "elapsed_s", "video_frames", "audio_packets", "dropped")}
        return out

    def file_of(self, rec: Recording) -> Path:
        root = (self.data_dir / RECORDINGS_DIR).resolve()
        path = (self.data_dir / rec.path).resolve()
        if root not in path.parents:
            raise _ApiError(404, "file_missing", "the recording's file is not in the recordings folder")
        return path


def download_name(rec: Recording) -> str:
    return f"{safe_component(rec.meeting_id)}-{Path(rec.path).name}"


def _connection(storage: Any) -> sqlite3.Connection:
    for attr in ("_conn", "_db", "conn", "db"):
        conn = getattr(storage, attr, None)
        if isinstance(conn, sqlite3.Connection):
            return conn
    raise TypeError("storage has no sqlite3 connection attribute")


# ---------------------------------------------------------------------------- HTTP

RECORDINGS_KEY = web.AppKey("recordings", RecordingService)


def setup_routes(app: web.Application, storage: Any, tokens: Any, signaling: Any,
                 data_dir: Optional[Path] = None) -> RecordingService:
    """Add the recording endpoints to `app` (idempotent: a second call returns the service).

    `data_dir` defaults to the folder holding the database file (Settings.db_path is
    `<data_dir>/hoinghi.db`)."""
    if RECORDINGS_KEY in app:
        return app[RECORDINGS_KEY]
    service = RecordingService(storage, tokens, signaling, Path(data_dir) if data_dir else Path(storage.path).parent)
    app[RECORDINGS_KEY] = service

    def authorize(request: web.Request, meeting_id: str) -> Any:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise _ApiError(401, "auth_required", "send 'Authorization: Bearer <hub or operator token>'")
        try:
            claims = tokens.verify(token)
        except AuthError as exc:
            raise _ApiError(401, exc.code, exc.message) from None
        if claims.role not in RECORDING_ROLES:
            raise _ApiError(403, "forbidden", "only the hub or an operator may record a meeting")
        if claims.meeting_id != meeting_id:
            raise _ApiError(403, "wrong_meeting", "this token is for another meeting")
        return claims

    async def control(request: web.Request) -> web.Response:
        meeting_id = request.match_info["meeting_id"]
        try:
            claims = authorize(request, meeting_id)
            try:
                body = await request.json()
            except ValueError:
                raise _ApiError(400, "bad_json", "the body must be JSON: {\"action\": \"start\"} or {\"action\": \"stop\"}") from None
            action = body.get("action") if isinstance(body, dict) else None
            if action == "start":
                return web.json_response({"recording": await service.start(meeting_id, claims.site_id)}, status=201)
            if action == "stop":
                if storage.get_meeting(meeting_id) is None:
                    raise _ApiError(404, "meeting_not_found", f"meeting {meeting_id!r} does not exist")
                return web.json_response({"recording": await service.stop(meeting_id, claims.site_id)})
            raise _ApiError(400, "bad_action", "action must be \"start\" or \"stop\"")
        except _ApiError as exc:
            return exc.response()

    async def listing(request: web.Request) -> web.Response:
        meeting_id = request.match_info["meeting_id"]
        try:
            authorize(request, meeting_id)
            if storage.get_meeting(meeting_id) is None:
                raise _ApiError(404, "meeting_not_found", f"meeting {meeting_id!r} does not exist")
        except _ApiError as exc:
            return exc.response()
        active = service.active.get(meeting_id)
        return web.json_response({
            "meeting_id": meeting_id,
            "recording": active.rec_id if active is not None else None,
            "recordings": [service.describe(r) for r in service.store.for_meeting(meeting_id)],
        })

    async def download(request: web.Request) -> web.StreamResponse:
        try:
            try:
                rec_id = int(request.match_info["rec_id"])
            except ValueError:
                raise _ApiError(404, "recording_not_found", "no such recording") from None
            rec = service.store.get(rec_id)
            if rec is None:
                raise _ApiError(404, "recording_not_found", "no such recording")
            authorize(request, rec.meeting_id)
            active = service.active.get(rec.meeting_id)
            if active is not None and active.rec_id == rec.id:
                raise _ApiError(409, "recording_in_progress", "stop the recording before downloading it")
            path = service.file_of(rec)
            if not path.is_file():
                raise _ApiError(404, "file_missing", "the recording's file is no longer on the server")
        except _ApiError as exc:
            return exc.response()
        return web.FileResponse(path, headers={
            "Content-Type": "video/webm",
            "Content-Disposition": f'attachment; filename="{download_name(rec)}"',
            "Cache-Control": "no-store",
        })

    app.router.add_post("/api/meetings/{meeting_id}/recording", control)
    app.router.add_get("/api/meetings/{meeting_id}/recordings", listing)
    app.router.add_get("/api/recordings/{rec_id}/file", download)

    async def on_shutdown(app: web.Application) -> None:
        await service.shutdown()

    app.on_shutdown.append(on_shutdown)
    return service
