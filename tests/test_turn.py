"""TURN over TLS: a site that may only use a relay reaches the server through coturn.

Real parts: Debian's coturn on loopback with a self-signed certificate and the TURN REST
API (use-auth-secret), the server's join reply handing out short-lived credentials, and an
aiortc site forced to `iceTransportPolicy: relay` connecting over `turns:` (TLS over TCP).
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from loadtest.peer import SyntheticSite
from server.app import build_app
from server.auth import TokenService
from server.config import Settings
from server.storage import Storage
from server.turn import turn_credentials

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("turnserver") is None, reason="coturn is not installed (apt-get install coturn)"),
]

SECRET = "turn-test-secret-0123456789"


def _free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def coturn(tmp_path: Path):
    """coturn listening only for TLS on loopback; yields (tls port, certificate path)."""
    cert, key = tmp_path / "turn.pem", tmp_path / "turn.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    port = _free_port()
    relay_min = 49200 + (port % 500) * 2
    log = tmp_path / "turn.log"
    proc = subprocess.Popen(
        ["turnserver", "-n", "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1",
         f"--listening-port={_free_port()}", f"--tls-listening-port={port}",
         "--no-udp", "--no-tcp", "--no-dtls", "--use-auth-secret", f"--static-auth-secret={SECRET}",
         "--realm=hoinghi.test", f"--cert={cert}", f"--pkey={key}", "--allow-loopback-peers", "--no-cli",
         f"--db={tmp_path / 'turndb'}", f"--min-port={relay_min}", f"--max-port={relay_min + 40}",
         f"--log-file={log}", "--simple-log", "--no-stdout-log", "--fingerprint"],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        raise AssertionError("coturn did not start: " + (log.read_text() if log.exists() else ""))
    try:
        yield port, cert
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_turn_rest_credentials_follow_coturn_scheme() -> None:
    user, cred = turn_credentials("s3cret", "xa-1", 600, now=1_000_000)
    assert user == "1000600:xa-1"
    # base64(HMAC-SHA1("s3cret", "1000600:xa-1")), as coturn computes it for use-auth-secret
    import base64
    import hashlib
    import hmac

    assert cred == base64.b64encode(hmac.new(b"s3cret", b"1000600:xa-1", hashlib.sha1).digest()).decode()


async def test_relay_only_site_reaches_server_through_turn_over_tls(coturn, tmp_path, monkeypatch):
    port, cert = coturn
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the client trusts the test CA, as a site trusts a real one
    settings = Settings(
        data_dir=tmp_path, host="127.0.0.1", port=0, announce_ip="127.0.0.1",
        turn_urls=[f"turns:127.0.0.1:{port}?transport=tcp"], turn_secret=SECRET, turn_ttl_s=600,
    )
    storage = Storage(settings.db_path)
    storage.ensure_demo()
    tokens = TokenService(settings.secret_path)
    server = TestServer(await build_app(settings, storage, tokens), host="127.0.0.1", port=0)
    await server.start_server()
    url = f"http://127.0.0.1:{server.port}"
    hub = SyntheticSite(url, tokens.issue("demo", "hub", "hub", 600), fps=15)
    site = SyntheticSite(url, tokens.issue("demo", "xa-relay", "site", 600), fps=15, use_ice_servers=True, relay_only=True)
    try:
        await hub.join()
        await hub.start_media()
        joined = await site.join()
        servers = joined["ice_servers"]
        assert len(servers) == 1 and servers[0]["urls"] == [f"turns:127.0.0.1:{port}?transport=tcp"]
        expiry, user = servers[0]["username"].split(":", 1)
        assert user == "xa-relay" and 590 <= int(expiry) - time.time() <= 610
        await site.start_media()
        hub_id, site_id = hub.joined["participant"]["id"], joined["participant"]["id"]
        deadline = time.monotonic() + 25
        while time.monotonic() < deadline:
            a, b = site.track_for(hub_id), hub.track_for(site_id)
            if a and b and a.frames > 10 and b.frames > 10:
                break
            await asyncio.sleep(0.2)
        assert site.track_for(hub_id) and site.track_for(hub_id).frames > 10, "no media from the hub via TURN"
        assert hub.track_for(site_id) and hub.track_for(site_id).frames > 10, "no media to the hub via TURN"
        # the site's only path is the relay: its nominated pair's local candidate is relayed
        ice = site.pc.getTransceivers()[0].receiver.transport.transport._connection
        pair = ice._nominated[1]
        assert pair.local_candidate.type == "relay"
        assert all(c.type == "relay" for c in ice.local_candidates)  # it never offered another path
    finally:
        await site.close()
        await hub.close()
        await server.close()
        storage.close()


async def test_expired_turn_credential_is_refused_by_coturn(coturn, monkeypatch):
    """The credential really is checked by the relay: one minted already expired gets no allocation."""
    import ssl

    from aioice import stun
    from aioice.turn import create_turn_endpoint

    port, cert = coturn
    context = ssl.create_default_context(cafile=str(cert))
    good = turn_credentials(SECRET, "xa-1", 60)
    transport, protocol = await create_turn_endpoint(
        asyncio.DatagramProtocol, ("127.0.0.1", port), *good, ssl=context, transport="tcp"
    )
    assert transport.get_extra_info("related_address") is not None or protocol is not None
    transport.close()
    expired = turn_credentials(SECRET, "xa-1", -60)
    with pytest.raises(stun.TransactionFailed):
        await create_turn_endpoint(asyncio.DatagramProtocol, ("127.0.0.1", port), *expired, ssl=context, transport="tcp")
