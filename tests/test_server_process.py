"""`hoinghi serve` and `hoinghi token` as an operator runs them, in their own process.

Also the process-level proof that the server never decodes or encodes: aiortc starts one
decoder thread per received track and encodes in executor threads, so a server that
forwards media for several sites without gaining a single thread runs no codec.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from loadtest.peer import SyntheticSite

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    text = f.read()
            except OSError:
                continue
            if int(text[text.rindex(")") + 2 :].split()[1]) == pid:
                out.append(int(entry))
    return out


def _threads(pid: int) -> int:
    """Threads of the server and of its media workers (child processes)."""
    return sum(len(os.listdir(f"/proc/{p}/task")) for p in [pid, *_children(pid)])


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "server.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.fixture
def served(tmp_path):
    port = _free_port()
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--data-dir", str(tmp_path), "--announce-ip", "127.0.0.1"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url + "/healthz", timeout=1).read()
            break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        raise AssertionError((tmp_path / "server.log").read_text())
    try:
        yield url, port, tmp_path, proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _token_from_cli(port: int, data_dir: Path, site: str, role: str) -> tuple[str, str]:
    out = _cli("token", "--meeting", "demo", "--site", site, "--role", role, "--data-dir", str(data_dir),
               "--port", str(port), "--announce-ip", "127.0.0.1")
    assert out.returncode == 0, out.stderr
    url = out.stdout.strip().splitlines()[-1]
    assert "#t=" in url
    return url, url.split("#t=", 1)[1]


async def test_cli_token_joins_served_meeting_and_server_runs_no_codec(served):
    url, port, data_dir, proc = served
    hub_url, hub_token = _token_from_cli(port, data_dir, "hub", "hub")
    assert hub_url.startswith(f"http://127.0.0.1:{port}/hub#t=")
    site_url, site_token = _token_from_cli(port, data_dir, "xa-1", "site")
    assert site_url.startswith(f"http://127.0.0.1:{port}/site#t=")
    await asyncio.sleep(0.5)
    # `hoinghi serve` runs media in worker processes by default (one per core)
    assert len(_children(proc.pid)) == min(len(os.sched_getaffinity(0)), 256)
    baseline = _threads(proc.pid)
    peers = [
        SyntheticSite(url, hub_token, fps=15),
        SyntheticSite(url, site_token, fps=15),
        SyntheticSite(url, _token_from_cli(port, data_dir, "xa-2", "site")[1], publish_video=False, publish_audio=False),
    ]
    try:
        for p in peers:
            await p.join()
            await p.start_media()
        hub_id = peers[0].joined["participant"]["id"]
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if all((p.track_for(hub_id) and p.track_for(hub_id).frames > 20) for p in peers[1:]):
                break
            await asyncio.sleep(0.2)
        assert all(p.track_for(hub_id).frames > 20 for p in peers[1:])
        # 4 published tracks forwarded to 5 receive slots: aiortc would have started >= 5
        # decoder threads and executor threads for encoding; the forwarding core (in the
        # server's worker processes) starts none.
        assert _threads(proc.pid) <= baseline
    finally:
        for p in peers:
            await p.close()


def test_page_routes_and_health(served):
    url, port, data_dir, proc = served
    for path in ("/site", "/hub", "/static/js/conference.js", "/static/css/app.css"):
        with urllib.request.urlopen(url + path, timeout=5) as r:
            assert r.status == 200
            assert r.headers["X-Content-Type-Options"] == "nosniff"
    with urllib.request.urlopen(url + "/healthz", timeout=5) as r:
        assert b'"status": "ok"' in r.read()


def test_token_for_unknown_meeting_is_a_plain_error(tmp_path):
    out = _cli("token", "--meeting", "nope", "--site", "s", "--role", "site", "--data-dir", str(tmp_path))
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and "nope" in (out.stderr + out.stdout)
