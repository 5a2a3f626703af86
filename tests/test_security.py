"""Security and limits on a running server: the signing key rotated while sites are in the
meeting (no restart), a token bound to its meeting, the participant cap with a clear
refusal, and the operations endpoints (process CPU among the metrics).

Real app on loopback, real tokens and SQLite; the tokens of the rotation are made by a
second TokenService on the same file, exactly as `hoinghi token` does.
"""

from __future__ import annotations

import aiohttp
import pytest

from loadtest.peer import SyntheticSite
from server.auth import TokenService

pytestmark = pytest.mark.slow


async def _join(url: str, token: str, **extra) -> dict:
    site = SyntheticSite(url, token, publish_video=False, publish_audio=False)
    try:
        if extra:
            await site.connect()
            fut = site.wait_for("error")
            await site.send({"type": "join", "token": token, **extra})
            return await fut
        try:
            return await site.join()
        except ConnectionRefusedError as exc:
            return {"type": "error", "code": str(exc)}
    finally:
        await site.close()


def _keys(path) -> list[str]:
    return [l.split("#")[0].strip() for l in path.read_text().splitlines() if l.split("#")[0].strip()]


async def test_signing_key_rotated_while_the_server_runs(hoinghi_server, monkeypatch):
    server = hoinghi_server
    monkeypatch.setattr(TokenService, "RELOAD_CHECK_S", 0.0)  # production: checked once a second
    path = server.settings.secret_path
    old_key = _keys(path)[0]
    old_token = server.token("xa-old")
    in_meeting = SyntheticSite(server.url, server.token("xa-staying"), publish_video=False, publish_audio=False)
    await in_meeting.join()
    try:
        # step 1: a new key on the first line, the old one kept below it
        new_key = "cd" * 32
        path.write_text(f"{new_key}\n{old_key}  # previous: delete once its tokens expired\n")
        cli = TokenService(path)  # what `hoinghi token` would sign with now
        new_token = cli.issue("demo", "xa-new", "site", 600)
        assert (await _join(server.url, new_token))["type"] == "joined"
        assert (await _join(server.url, old_token))["type"] == "joined"  # links already sent keep working
        assert server.token("xa-x").split(".")[0] == new_token.split(".")[0]  # the server signs with the new key too
        # step 2: the old key retired
        path.write_text(f"{new_key}\n")
        refused = await _join(server.url, old_token)
        assert refused["type"] == "error" and refused["code"] == "auth_invalid"
        assert (await _join(server.url, new_token))["type"] == "joined"
        # a half-written file does not lock everyone out: the last good keys stay
        path.write_text("not-hex\n")
        assert (await _join(server.url, new_token))["type"] == "joined"
        # nobody in the meeting noticed any of it
        assert not in_meeting.ws.closed and not any(m.get("type") == "bye" for m in in_meeting.messages)
    finally:
        await in_meeting.close()


async def test_a_token_only_opens_its_own_meeting(hoinghi_server):
    server = hoinghi_server
    server.storage.create_meeting("other", "Họp khác")
    token = server.token("xa-1")  # for the demo meeting
    # there is no way to name another meeting: the join message has no such field
    reply = await _join(server.url, token, meeting="other")
    assert reply["type"] == "error" and reply["code"] == "invalid_message"
    joined = await _join(server.url, token)
    assert joined["meeting"]["id"] == "demo"
    # and a site's token cannot run the other meeting through the API either
    async with aiohttp.ClientSession() as http:
        async with http.post(server.url + "/api/meetings/other/start", headers={"Authorization": f"Bearer {token}"}) as r:
            assert r.status == 403
    assert server.storage.get_meeting("other").status == "scheduled"


async def test_participant_cap_refuses_with_a_reason(hoinghi_server):
    server = hoinghi_server
    server.signaling.max_participants = 2  # before the room exists: taken when it is created
    first = SyntheticSite(server.url, server.token("hub", "hub"), publish_video=False, publish_audio=False)
    second = SyntheticSite(server.url, server.token("xa-1"), publish_video=False, publish_audio=False)
    try:
        await first.join()
        await second.join()
        reply = await _join(server.url, server.token("xa-2"))
        assert reply["type"] == "error" and reply["code"] == "meeting_full"
        # the same site reconnecting replaces its own connection: never refused as "full"
        assert (await _join(server.url, server.token("xa-1")))["type"] == "joined"
    finally:
        await first.close()
        await second.close()


async def test_metrics_and_health_for_operations(hoinghi_server):
    async with aiohttp.ClientSession() as http:
        async with http.get(hoinghi_server.url + "/metrics") as r:
            body = await r.text()
        async with http.get(hoinghi_server.url + "/healthz") as r:
            health = await r.json()
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "hoinghi_rooms",
                 "hoinghi_signaling_connections", "hoinghi_downlink_estimate_bps"):
        assert name in body, name
    assert health["status"] == "ok"
