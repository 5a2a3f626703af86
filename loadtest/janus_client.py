"""Drive Janus's VideoRoom (room 1234, shared/janus/start-janus.sh) with the raw synthetic peers.

Janus REST API (`/janus`): create a session, attach `janus.plugin.videoroom` handles, send
plugin messages (answered with `ack`, the result arrives as an event on the session's long
poll). A publisher joins with `ptype: publisher` and publishes with our offer; a subscriber
joins with `ptype: subscriber` and the feeds it wants, Janus sends the offer and the raw peer
answers, then `start`. One session carries every handle, with one long-poll loop that also
keeps the session alive.

`start_janus`/`stop_janus` run the shared start script (JANUS_EVENT_LOOPS=1 by default: all
handles on one event loop, Janus's best configuration for many subscribers on few cores).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import aiohttp

from .rawpeer import RawPeer

logger = logging.getLogger(__name__)

START_SCRIPT = Path(__file__).resolve().parents[2] / "shared" / "janus" / "start-janus.sh"
ROOM = 1234


class JanusError(RuntimeError):
    pass


_JANUS_DIRS: dict[int, str] = {}  # pid -> the config/log directory made for it


def start_janus(port: int = 8088, event_loops: int = 1, cpus: Optional[str] = "0", script: Path = START_SCRIPT) -> int:
    """Start Janus (installs Debian's package if missing); returns its PID."""
    cmd = ["bash", str(script), str(port)]
    if cpus:
        cmd = ["taskset", "-c", cpus] + cmd
    janus_dir = tempfile.mkdtemp(prefix="janus-bench-")
    env = dict(os.environ, JANUS_EVENT_LOOPS=str(event_loops), JANUS_DIR=janus_dir)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        shutil.rmtree(janus_dir, ignore_errors=True)
        raise JanusError(f"start-janus.sh failed ({out.returncode}): {out.stderr.strip()[-500:]}")
    lines = [line for line in out.stdout.strip().splitlines() if line.strip()]
    try:
        pid = int(lines[-1])
    except (IndexError, ValueError):
        raise JanusError(f"start-janus.sh did not print a PID: {out.stdout[-300:]!r}") from None
    _JANUS_DIRS[pid] = janus_dir
    return pid


def stop_janus(pid: int, timeout: float = 5.0, keep_dir: bool = False) -> None:
    try:
        _kill(pid, timeout)
    finally:
        janus_dir = _JANUS_DIRS.pop(pid, None)
        if janus_dir and not keep_dir:
            shutil.rmtree(janus_dir, ignore_errors=True)


def _kill(pid: int, timeout: float) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class JanusSession:
    def __init__(self, http: aiohttp.ClientSession, base_url: str = "http://127.0.0.1:8088/janus") -> None:
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.session_id: Optional[int] = None
        self._pending: dict[str, asyncio.Future] = {}
        self._poller: Optional[asyncio.Task] = None
        self.events: list[dict] = []  # events nobody waited for (webrtcup, media, slowlink...)
        self.closed = False

    async def _post(self, path: str, body: dict) -> dict:
        body = dict(body, transaction=secrets.token_hex(6))
        async with self.http.post(self.base_url + path, json=body) as resp:
            data = await resp.json(content_type=None)
        if data.get("janus") == "error":
            raise JanusError(f"{body.get('janus')}: {data.get('error')}")
        return data

    async def create(self) -> int:
        data = await self._post("", {"janus": "create"})
        self.session_id = data["data"]["id"]
        self._poller = asyncio.ensure_future(self._poll())
        return self.session_id

    async def attach(self) -> int:
        data = await self._post(f"/{self.session_id}", {"janus": "attach", "plugin": "janus.plugin.videoroom"})
        return data["data"]["id"]

    async def message(self, handle: int, body: dict, jsep: Optional[dict] = None, timeout: float = 30.0) -> dict:
        """Send a plugin request; return the plugin's event (with its jsep, if any)."""
        txn = secrets.token_hex(8)
        msg: dict[str, Any] = {"janus": "message", "body": body, "transaction": txn}
        if jsep is not None:
            msg["jsep"] = jsep
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending[txn] = fut
        try:
            async with self.http.post(f"{self.base_url}/{self.session_id}/{handle}", json=msg) as resp:
                data = await resp.json(content_type=None)
            if data.get("janus") == "error":
                raise JanusError(f"{body.get('request')}: {data.get('error')}")
            if data.get("janus") == "success":  # synchronous request
                return data
            event = await asyncio.wait_for(fut, timeout)
        finally:
            self._pending.pop(txn, None)
        pdata = event.get("plugindata", {}).get("data", {})
        if "error" in pdata:
            raise JanusError(f"{body.get('request')}: {pdata.get('error_code')} {pdata['error']}")
        return event

    async def trickle_done(self, handle: int) -> None:
        await self._post(f"/{self.session_id}/{handle}", {"janus": "trickle", "candidate": {"completed": True}})

    async def _poll(self) -> None:
        url = f"{self.base_url}/{self.session_id}"
        while not self.closed:
            try:
                async with self.http.get(url, params={"maxev": "50", "rid": secrets.token_hex(4)}) as resp:
                    data = await resp.json(content_type=None)
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
                if self.closed:
                    return
                await asyncio.sleep(0.2)
                continue
            for event in data if isinstance(data, list) else [data]:
                txn = event.get("transaction")
                fut = self._pending.get(txn) if txn else None
                if fut is not None and event.get("janus") == "event" and not fut.done():
                    fut.set_result(event)
                elif event.get("janus") not in ("keepalive", "ack"):
                    self.events.append(event)
                    if len(self.events) > 10000:
                        del self.events[:5000]

    async def destroy(self) -> None:
        self.closed = True
        if self.session_id is not None:
            try:
                await self._post(f"/{self.session_id}", {"janus": "destroy"})
            except Exception:
                pass
        if self._poller is not None:
            self._poller.cancel()


class JanusPublisher(RawPeer):
    """A raw peer publishing into the VideoRoom."""

    def __init__(self, session: JanusSession, name: str, **kw: Any) -> None:
        kw.setdefault("publish_video", True)
        super().__init__(name, video_slots=0, audio_slots=0, **kw)
        self.session = session
        self.handle: Optional[int] = None
        self.feed_id: Optional[int] = None

    async def join(self) -> None:
        self.handle = await self.session.attach()
        event = await self.session.message(self.handle, {"request": "join", "ptype": "publisher", "room": ROOM, "display": self.name})
        self.feed_id = event["plugindata"]["data"]["id"]

    async def negotiate(self) -> None:
        assert self.handle is not None
        offer = await self.create_offer()
        body = {"request": "publish"}
        event = await self.session.message(self.handle, body, jsep={"type": "offer", "sdp": offer})
        jsep = event.get("jsep")
        if not jsep or jsep.get("type") != "answer":
            raise JanusError(f"{self.name}: no answer from Janus: {event}")
        await self.accept_answer(jsep["sdp"])


class JanusSubscriber(RawPeer):
    """A raw peer receiving `feeds` on one subscriber handle (one peer connection)."""

    def __init__(self, session: JanusSession, name: str, feeds: Sequence[int], **kw: Any) -> None:
        super().__init__(name, publish_video=False, publish_audio=False, **kw)
        self.session = session
        self.feeds = list(feeds)
        self.handle: Optional[int] = None

    async def join(self) -> None:
        self.handle = await self.session.attach()

    async def negotiate(self) -> None:
        assert self.handle is not None
        body = {"request": "join", "ptype": "subscriber", "room": ROOM, "streams": [{"feed": f} for f in self.feeds]}
        event = await self.session.message(self.handle, body)
        jsep = event.get("jsep")
        if not jsep or jsep.get("type") != "offer":
            raise JanusError(f"{self.name}: Janus sent no offer: {event}")
        answer = await self.answer_offer(jsep["sdp"])
        await self.session.message(self.handle, {"request": "start", "room": ROOM}, jsep={"type": "answer", "sdp": answer})
