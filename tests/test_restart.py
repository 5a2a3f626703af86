"""A server restart (SIGTERM, start again on the same port and database) loses nothing.

Real `hoinghi serve` processes, real SQLite file, real aiortc sites on loopback. Before the
restart: a meeting is run (joins, a removal, a lock, a roll call). SIGTERM: every connected
site is told `bye` `server_shutdown` with a retry delay, and the process exits 0 within a
few seconds. After the restart: the removed site stays out, a site that had been in gets
back into the locked meeting, a new one does not, media flows again, and the events and
attendance recorded before are all there. The server log never contains a token.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from loadtest.peer import SyntheticSite
from server.auth import TokenService
from server.storage import Storage
from testkit import chair

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`hoinghi serve` as an operator runs it; restartable on the same port and data dir."""

    def __init__(self, data_dir: Path, port: int) -> None:
        self.data_dir = data_dir
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = data_dir / "server.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "server.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                 "--data-dir", str(self.data_dir), "--announce-ip", "127.0.0.1"],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"),
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log()
            try:
                urllib.request.urlopen(self.url + "/healthz", timeout=1).read()
                return
            except OSError:
                time.sleep(0.2)
        raise AssertionError("server did not start:\n" + self.log())

    def terminate(self) -> tuple[int, float]:
        """SIGTERM; (exit code, seconds it took)."""
        assert self.proc is not None
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(15)
        return code, time.monotonic() - t0

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def token(self, site: str, role: str = "site") -> str:
        return TokenService(self.data_dir / "secret.key").issue("demo", site, role, 600)


async def _frames_from(viewer: SyntheticSite, publisher: SyntheticSite, n: int = 10, timeout: float = 15) -> None:
    pid = publisher.joined["participant"]["id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        track = viewer.track_for(pid)
        if track and track.frames > n:
            return
        await asyncio.sleep(0.2)
    raise AssertionError("media did not flow")


async def _refused(url: str, token: str) -> str:
    site = SyntheticSite(url, token, publish_video=False, publish_audio=False)
    try:
        with pytest.raises(ConnectionRefusedError) as err:
            await site.join()
        return str(err.value)
    finally:
        await site.close()


async def test_restart_keeps_meeting_state_and_sites_come_back(tmp_path):
    server = ServerProcess(tmp_path / "data", _free_port())
    server.start()
    tokens = {name: server.token(name, "hub" if name == "hub" else "site") for name in ("hub", "xa-a", "xa-out", "xa-new")}
    peers: list[SyntheticSite] = []
    try:
        hub = SyntheticSite(server.url, tokens["hub"], fps=15)
        a = SyntheticSite(server.url, tokens["xa-a"], fps=15)
        out = SyntheticSite(server.url, tokens["xa-out"], publish_video=False, publish_audio=False)
        peers += [hub, a, out]
        for p in peers:
            await p.join()
        await hub.start_media()
        await a.start_media()
        await _frames_from(a, hub)

        # the chair removes one site, locks the meeting and takes a roll call
        await chair(hub, "remove", site_id="xa-out")
        await chair(hub, "lock")
        rc = (await chair(hub, "roll_call_start"))["roll_call_id"]
        answered = a.wait_for("roll_call", 5)
        await asyncio.sleep(0.2)
        await a.send({"type": "roll_call_answer", "roll_call_id": rc})
        await answered
        await chair(hub, "roll_call_end")

        # SIGTERM: everyone connected hears why, and the process is gone within seconds, cleanly
        byes = [p.wait_for("bye", 10) for p in (hub, a)]
        code, took = server.terminate()
        assert code == 0, server.log()[-3000:]
        assert took < 5.0, f"shutdown took {took:.1f} s"
        for bye in byes:
            msg = await bye
            assert msg["reason"] == "server_shutdown" and msg["retry_after_ms"] > 0
        for p in peers:
            await p.close()
        peers.clear()
        # the database was checkpointed on the way out: the WAL holds nothing unflushed
        wal = server.data_dir / "hoinghi.db-wal"
        assert not wal.exists() or wal.stat().st_size == 0

        server.start()
        # removed stays removed; a site never in cannot enter the locked meeting
        assert await _refused(server.url, tokens["xa-out"]) == "removed"
        assert await _refused(server.url, tokens["xa-new"]) == "meeting_locked"
        # the hub and a site that had been in come back with the links they had
        hub = SyntheticSite(server.url, tokens["hub"], fps=15)
        a = SyntheticSite(server.url, tokens["xa-a"], fps=15)
        peers += [hub, a]
        await hub.join()
        joined = await a.join()
        assert joined["meeting"]["locked"] is True
        await hub.start_media()
        await a.start_media()
        await _frames_from(a, hub)
        await _frames_from(hub, a)

        with Storage(server.data_dir / "hoinghi.db") as db:
            kinds = [(e.kind, e.site_id) for e in db.list_events("demo", limit=500)]
            assert ("join", "xa-out") in kinds and ("server_shutdown", None) in kinds
            assert kinds.count(("join", "xa-a")) == 2
            attendance = {x.site_id: x.status for x in db.attendance(rc)}
            assert attendance["xa-a"] == "present"
    finally:
        for p in peers:
            await p.close()
        server.kill()
    log = server.log()
    assert "hoinghi stopped" in log
    for token in tokens.values():
        assert token not in log and token.rsplit(".", 1)[1] not in log  # not even the signature


async def test_joins_during_shutdown_are_refused_as_restarting(tmp_path):
    """Between SIGTERM and exit the server admits nobody; the refusal says to come back."""
    from aiohttp.test_utils import TestServer

    from server.app import SIGNALING_KEY, build_app
    from server.config import Settings

    settings = Settings(data_dir=tmp_path, host="127.0.0.1", port=0, announce_ip="127.0.0.1")
    storage = Storage(settings.db_path)
    storage.ensure_demo()
    tokens = TokenService(settings.secret_path)
    server = TestServer(await build_app(settings, storage, tokens), host="127.0.0.1", port=0)
    await server.start_server()
    url = f"http://127.0.0.1:{server.port}"
    site = SyntheticSite(url, tokens.issue("demo", "xa-1", "site", 600), publish_video=False, publish_audio=False)
    late = SyntheticSite(url, tokens.issue("demo", "xa-2", "site", 600), publish_video=False, publish_audio=False)
    try:
        await site.join()
        bye = site.wait_for("bye", 5)
        await server.app[SIGNALING_KEY].shutdown()  # what SIGTERM runs, before the listener closes
        assert (await bye)["reason"] == "server_shutdown"
        await late.connect()
        refused = late.wait_for("joined", 5)
        await late.send({"type": "join", "token": late.token})
        reply = await refused
        assert reply["type"] == "error" and reply["code"] == "server_shutdown" and reply["fatal"]
    finally:
        await site.close()
        await late.close()
        await server.close()
        storage.close()


async def test_removal_lasts_until_readmit_or_the_meeting_ends(hoinghi_server):
    """The removed list lives in SQLite: a fresh service on the same database (what a restart
    builds) still refuses the site; `readmit` and ending the meeting clear it there too."""
    from signaling.service import SignalingService

    server = hoinghi_server
    hub = SyntheticSite(server.url, server.token("hub", "hub"), publish_video=False, publish_audio=False)
    out = SyntheticSite(server.url, server.token("xa-out"), publish_video=False, publish_audio=False)
    try:
        await hub.join()
        await out.join()
        await chair(hub, "remove", site_id="xa-out")
        fresh = SignalingService(server.tokens, server.storage, server.signaling.media)
        verdict = fresh.admit(server.token("xa-out"))
        assert verdict.code == "removed"
        await chair(hub, "readmit", site_id="xa-out")
        assert not hasattr(SignalingService(server.tokens, server.storage, server.signaling.media).admit(server.token("xa-out")), "code")
        await chair(hub, "remove", site_id="xa-out")
        await server.signaling.end_meeting("demo", by="hub")
        assert server.storage.site_admissions("demo") == (set(), set())
    finally:
        await hub.close()
        await out.close()
