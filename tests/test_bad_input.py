"""Bad input gets a clear error and changes nothing else.

Every test that sends something bad does it while a real publisher -> subscriber stream is
flowing through the same server, and checks afterwards that the stream never stalled and
that the meeting's state is unchanged.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time

import aiohttp
import pytest

from loadtest.peer import SyntheticSite

pytestmark = pytest.mark.slow


async def _ws(server) -> aiohttp.ClientWebSocketResponse:
    session = aiohttp.ClientSession()
    ws = await session.ws_connect(server.url.replace("http", "ws") + "/ws")
    ws._test_session = session  # closed by _close_ws
    return ws


async def _close_ws(ws) -> None:
    await ws.close()
    await ws._test_session.close()


async def _recv(ws, timeout: float = 5.0) -> dict:
    msg = await ws.receive(timeout=timeout)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    return json.loads(msg.data)


@pytest.fixture
async def live_meeting(hoinghi_server):
    """A hub publishing to a site; yields (server, pub, sub, frames_so_far)."""
    pub = SyntheticSite(hoinghi_server.url, hoinghi_server.token("hub", "hub"), fps=15)
    sub = SyntheticSite(hoinghi_server.url, hoinghi_server.token("s-watch"), publish_video=False, publish_audio=False)
    await pub.join()
    await pub.start_media()
    await sub.join()
    await sub.start_media()
    pid = pub.joined["participant"]["id"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (sub.track_for(pid) and sub.track_for(pid).frames > 5):
        await asyncio.sleep(0.1)
    assert sub.track_for(pid).frames > 5

    def frames() -> int:
        return sub.track_for(pid).frames

    yield hoinghi_server, pub, sub, frames
    await pub.close()
    await sub.close()


async def _still_flowing(frames, seconds: float = 1.5) -> None:
    before = frames()
    await asyncio.sleep(seconds)
    assert frames() - before >= 15 * seconds * 0.8, "the meeting's stream stalled"


def _state(server) -> tuple:
    room = server.signaling.rooms["demo"]
    return (sorted(room.sessions), sorted(room.router.transports))


@pytest.mark.parametrize(
    "token,code",
    [("not-a-jwt", "auth_invalid"), ("a.b.c", "auth_invalid"), ("", None)],
)
async def test_bad_tokens_are_refused_and_socket_closes(live_meeting, token, code):
    server, pub, sub, frames = live_meeting
    state = _state(server)
    ws = await _ws(server)
    await ws.send_str(json.dumps({"type": "join", "token": token}))
    reply = await _recv(ws)
    assert reply["type"] == "error"
    if code:
        assert reply["code"] == code and reply["fatal"] is True
    else:
        # an empty token fails the schema: the client may correct it and join again
        assert reply["code"] == "invalid_message" and reply["fatal"] is False
    if reply["code"].startswith("auth"):
        msg = await ws.receive(timeout=5)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
        assert ws.close_code == 4401
    await _close_ws(ws)
    assert _state(server) == state
    await _still_flowing(frames)


async def test_expired_and_foreign_tokens(live_meeting, tmp_path):
    from server.auth import TokenService

    server, pub, sub, frames = live_meeting
    state = _state(server)
    cases = [
        (server.tokens.issue("demo", "s-x", "site", 1), "auth_expired"),
        (TokenService(tmp_path / "other.key").issue("demo", "s-x", "site", 600), "auth_invalid"),
        (server.tokens.issue("no-such-meeting", "s-x", "site", 600), "meeting_not_found"),
    ]
    await asyncio.sleep(6.5)  # past the 1 s lifetime plus the 5 s leeway
    for token, code in cases:
        ws = await _ws(server)
        await ws.send_str(json.dumps({"type": "join", "token": token}))
        reply = await _recv(ws)
        assert (reply["type"], reply["code"], reply["fatal"]) == ("error", code, True)
        assert reply["message"]
        await _close_ws(ws)
    assert _state(server) == state
    await _still_flowing(frames)


async def test_missing_join_times_out(hoinghi_server, monkeypatch):
    import signaling.session as session_mod

    monkeypatch.setattr(session_mod, "JOIN_TIMEOUT", 0.5)
    ws = await _ws(hoinghi_server)
    reply = await _recv(ws)
    assert reply["code"] == "auth_missing" and reply["fatal"]
    await _close_ws(ws)


async def test_malformed_and_unknown_messages_keep_connection_usable(live_meeting):
    server, pub, sub, frames = live_meeting
    state = _state(server)
    ws = await _ws(server)
    await ws.send_str(json.dumps({"type": "join", "token": server.token("s-noisy")}))
    assert (await _recv(ws))["type"] == "joined"
    bad = [
        ("{not json", "bad_json"),
        ("[1,2,3]", "bad_message"),
        (json.dumps({"no": "type"}), "bad_message"),
        (json.dumps({"type": "teleport", "id": 7}), "unknown_type"),
        (json.dumps({"type": "media_state", "audio": "yes", "video": True}), "invalid_message"),
        (json.dumps({"type": "ping", "extra": 1}), "invalid_message"),
        (json.dumps({"type": "join", "token": "x"}), "already_joined"),
        ("9" * 100000 + "[" * 10, "bad_json"),
    ]
    for text, code in bad:
        await ws.send_str(text)
        reply = await _recv(ws)
        assert reply["type"] == "error" and reply["code"] == code and reply["fatal"] is False, (text[:40], reply)
    await ws.send_str(json.dumps({"type": "teleport", "id": "abc"}))
    assert (await _recv(ws)).get("ref") == "abc"
    await ws.send_str(json.dumps({"type": "ping", "id": 1}))
    assert (await _recv(ws))["type"] == "pong"  # still usable
    await ws.send_str(json.dumps({"type": "ping", "id": 2}))
    big = json.dumps({"type": "offer", "sdp": "x" * (300 * 1024)})
    await ws.send_str(big)
    replies = [await _recv(ws), await _recv(ws)]
    assert {r["type"] for r in replies} == {"pong", "error"}
    assert any(r.get("code") == "message_too_large" for r in replies)
    await _close_ws(ws)
    await asyncio.sleep(0.2)
    assert _state(server) == state
    await _still_flowing(frames)


async def test_message_flood_is_rate_limited(live_meeting):
    server, pub, sub, frames = live_meeting
    ws = await _ws(server)
    await ws.send_str(json.dumps({"type": "join", "token": server.token("s-flood")}))
    assert (await _recv(ws))["type"] == "joined"
    for i in range(300):
        await ws.send_str(json.dumps({"type": "ping", "id": i}))
    codes = []
    try:
        while True:
            m = await _recv(ws, timeout=3)
            if m["type"] == "error":
                codes.append((m["code"], m["fatal"]))
    except (AssertionError, asyncio.TimeoutError):
        pass
    assert ("rate_limited", False) in codes
    assert ("rate_limited", True) in codes  # a sustained flood ends the connection
    await _close_ws(ws)
    await _still_flowing(frames)
    assert "s-flood" not in [s.participant.site_id for s in server.signaling.rooms["demo"].sessions.values()]


@pytest.mark.parametrize(
    "mutate,fragment",
    [
        (lambda sdp: "v=0\r\nthis is not sdp\r\n", "no media"),
        (lambda sdp: sdp.replace("a=group:BUNDLE", "a=group:LS"), "BUNDLE"),
        (lambda sdp: sdp.replace("VP8/90000", "XYZ/90000"), "VP8"),
        (lambda sdp: sdp.replace("a=rtcp-mux\r\n", ""), "rtcp-mux"),
        (lambda sdp: "m=video 9 UDP/TLS/RTP/SAVPF 96\r\n" * 3, None),
    ],
)
async def test_unacceptable_sdp_says_why_and_allows_retry(live_meeting, mutate, fragment):
    server, pub, sub, frames = live_meeting
    site = SyntheticSite(server.url, server.token("s-sdp"), publish_video=True, publish_audio=True)
    await site.join()
    from aiortc import RTCPeerConnection

    from media import network

    pc = RTCPeerConnection()
    pc.addTransceiver("audio", direction="recvonly")
    pc.addTransceiver("video", direction="recvonly")
    with network.bind_addresses(["127.0.0.1"]):
        await pc.setLocalDescription(await pc.createOffer())
    fut = site.wait_for("error")
    await site.send({"type": "offer", "sdp": mutate(pc.localDescription.sdp), "id": "o1"})
    err = await fut
    assert err["code"] == "sdp_invalid" and not err["fatal"] and err["ref"] == "o1"
    if fragment:
        assert fragment in err["message"], err["message"]
    await pc.close()
    # the same connection can still negotiate properly
    await site.start_media()
    assert await _wait_frames(site, pub)
    await site.close()
    await _still_flowing(frames)


async def _wait_frames(site, pub, n: int = 5, timeout: float = 10) -> bool:
    pid = pub.joined["participant"]["id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        t = site.track_for(pid)
        if t and t.frames >= n:
            return True
        await asyncio.sleep(0.1)
    return False


async def test_second_offer_is_refused(live_meeting):
    server, pub, sub, frames = live_meeting
    fut = sub.wait_for("error")
    await sub.send({"type": "offer", "sdp": sub.pc.localDescription.sdp})
    err = await fut
    assert err["code"] == "renegotiation_unsupported" and not err["fatal"]
    await _still_flowing(frames)


async def test_garbage_datagrams_to_media_port_are_dropped(live_meeting):
    server, pub, sub, frames = live_meeting
    room = server.signaling.rooms["demo"]
    transport = room.router.transports[pub.joined["participant"]["id"]]
    addr = transport._sendto.__self__.get_extra_info("sockname")
    dropped = transport.dropped_in
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    payloads = [b"\x80" * 40, b"\x80\xc8" + b"\x00" * 30, bytes(range(256)) * 4, b"\x00\x01\x00\x00", b"\x16\xfe\xfd" + b"\x00" * 50]
    for _ in range(50):
        for p in payloads:
            sock.sendto(p, addr)
    sock.close()
    await _still_flowing(frames)
    assert transport.dropped_in > dropped  # SRTP authentication rejected the fake RTP/RTCP
    assert not transport.closed


async def test_site_link_replaces_previous_session(live_meeting):
    server, pub, sub, frames = live_meeting
    twin = SyntheticSite(server.url, server.token("s-watch"), publish_video=False, publish_audio=False)
    bye = sub.wait_for("bye")
    await twin.join()
    assert (await bye)["reason"] == "replaced"
    room = server.signaling.rooms["demo"]
    assert [s.participant.site_id for s in room.sessions.values()].count("s-watch") == 1
    await twin.close()
