"""Property/fuzz tests: malformed input never crashes, never changes state, never hurts others.

Three layers:
* pure parsers (RTP, RTCP, transport-cc, VP8 descriptor, SDP offer, signaling schema): the
  only outcome of garbage is the documented error (ValueError / OfferError / MessageError);
* the forwarding core's entry points on a live meeting (a real hub publishing VP8 to a real
  subscriber): garbage RTP/RTCP fed to the hub's and the subscriber's server transports
  raises nothing, leaves the forwarding graph as it was, and the subscriber keeps receiving;
* the signaling socket of a running app: fuzzed frames from several connections, then a
  normal site still joins and media still flows.

Hypothesis budgets are small (the whole file runs in well under a minute).
"""

from __future__ import annotations

import asyncio
import json
import random

import aiohttp
import pytest
from aiortc import RTCPeerConnection
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loadtest.peer import SyntheticSite
from media import rtcp, vp8
from media.rtp import URI_ABS_SEND_TIME, URI_AUDIO_LEVEL, URI_MID, URI_RID, ext_table, parse_rtp
from media.sdp import OfferError, inspect_offer
from media.twcc import parse_feedback
from signaling.schema import MessageError, validate
from testkit import until

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KINDS = ext_table({URI_MID: 1, URI_AUDIO_LEVEL: 2, URI_ABS_SEND_TIME: 3, URI_RID: 4})


def _rtp_header(pt: int, seq: int, ts: int, ssrc: int, ext: bytes = b"", marker: int = 0) -> bytes:
    b0 = 0x80 | (0x10 if ext else 0)
    return bytes([b0, (marker << 7) | pt]) + seq.to_bytes(2, "big") + ts.to_bytes(4, "big") + ssrc.to_bytes(4, "big") + ext


# strategy: RTP-looking packets (version 2, plausible header) with arbitrary tails, which get
# much deeper into the parser than uniformly random bytes
rtp_like = st.builds(
    lambda b0, b1, rest: bytes([0x80 | (b0 & 0x3F), b1]) + rest,
    st.integers(0, 255), st.integers(0, 255), st.binary(max_size=80),
)
rtcp_like = st.lists(
    st.builds(
        lambda count, pt, body, lie: bytes([0x80 | (count & 0x1F), pt]) + ((len(body) // 4 + lie) & 0xFFFF).to_bytes(2, "big") + body,
        st.integers(0, 31), st.sampled_from([200, 201, 203, 205, 206, 204, 202]), st.binary(max_size=60), st.integers(-2, 2),
    ),
    min_size=1, max_size=4,
).map(b"".join)


# ---------------------------------------------------------------- pure parsers


@FAST
@given(st.one_of(st.binary(max_size=64), rtp_like))
def test_parse_rtp_returns_or_raises_value_error(data: bytes) -> None:
    try:
        info = parse_rtp(data, KINDS)
    except ValueError:
        return
    # whatever it accepted lies inside the packet
    assert 12 <= info.payload_offset <= len(data) - info.padding
    vp8.parse_descriptor(info)
    end = len(data) - info.padding
    for off in (info.vp8_pid_off, info.vp8_tl0_off):
        assert off == -1 or info.payload_offset <= off < end, (off, info.payload_offset, end)
    if info.vp8_pid_off >= 0 and info.vp8_pid_wide:
        assert info.vp8_pid_off + 1 < end


@FAST
@given(st.one_of(st.binary(max_size=80), rtcp_like))
def test_parse_rtcp_compound_returns_or_raises_value_error(data: bytes) -> None:
    try:
        items = list(rtcp.parse_compound(data))
    except ValueError:
        return
    for item in items:
        if isinstance(item, rtcp.Nack):
            assert all(0 <= s <= 0xFFFF for s in item.lost)
        if isinstance(item, rtcp.TransportCcFeedback):
            try:
                parse_feedback(item.payload)
            except ValueError:
                pass


@FAST
@given(st.binary(max_size=48))
def test_twcc_feedback_returns_or_raises_value_error(payload: bytes) -> None:
    try:
        reports = parse_feedback(payload)
    except ValueError:
        return
    count = int.from_bytes(payload[2:4], "big")
    assert len(reports) == count
    assert all(0 <= seq <= 0xFFFF for seq, _ in reports)


@FAST
@given(st.binary(max_size=24))
def test_vp8_helpers_stay_inside_the_buffer(payload: bytes) -> None:
    data = _rtp_header(96, 1, 1, 1) + payload
    info = parse_rtp(data, KINDS)
    vp8.parse_descriptor(info)
    for off in (info.vp8_pid_off, info.vp8_tl0_off):
        assert off == -1 or 12 <= off < len(data), (off, len(data))
    if info.vp8_pid_off >= 0 and info.vp8_pid_wide:
        assert info.vp8_pid_off + 1 < len(data), (info.vp8_pid_off, len(data))
    try:
        n = vp8.descriptor_length(data, 12, len(data))
        assert 0 <= n <= len(payload) or n < 0
    except (ValueError, IndexError):
        pytest.fail("descriptor_length raised on a short payload")
    try:
        vp8.keyframe_size(data, 12, len(data))
    except (ValueError, IndexError):
        pytest.fail("keyframe_size raised on a short payload")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
MESSAGE_TYPES = ["join", "offer", "media_state", "ping", "raise_hand", "roll_call_answer", "chair", "leave", "nope"]
FIELDS = ["type", "id", "token", "sdp", "audio", "video", "raised", "roll_call_id", "action", "participant_id", "site_id", "kind", "name", "protocol", "lang"]
messages = st.one_of(
    json_values,
    st.fixed_dictionaries({"type": st.sampled_from(MESSAGE_TYPES)}, optional={f: json_values for f in FIELDS if f != "type"}),
)


@FAST
@given(messages)
def test_schema_validate_accepts_or_raises_message_error(msg) -> None:
    try:
        out = validate(msg)
    except MessageError as exc:
        assert exc.code in ("bad_message", "unknown_type", "invalid_message") and exc.message
        return
    assert out["type"] in MESSAGE_TYPES


@pytest.fixture(scope="module")
def real_offer() -> str:
    async def make() -> str:
        pc = RTCPeerConnection()
        pc.addTransceiver("audio", direction="sendonly")
        pc.addTransceiver("video", direction="sendonly")
        for _ in range(2):
            pc.addTransceiver("video", direction="recvonly")
        pc.addTransceiver("audio", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        sdp = pc.localDescription.sdp
        await pc.close()
        return sdp.replace("a=group:BUNDLE", "a=group:BUNDLE", 1)

    return asyncio.run(make())


def _mutate(sdp: str, ops: list[tuple[int, int, str]]) -> str:
    lines = sdp.split("\r\n")
    for op, where, text in ops:
        if not lines:
            break
        i = where % len(lines)
        if op == 0:
            del lines[i]
        elif op == 1:
            lines.insert(i, lines[i])
        elif op == 2:
            lines[i] = lines[i][: len(lines[i]) // 2] + text
        else:
            lines[i] = text
    return "\r\n".join(lines)


sdp_ops = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 10_000), st.text(max_size=30)), min_size=1, max_size=6)


def test_the_unmutated_offer_is_accepted(real_offer: str) -> None:
    info = inspect_offer(real_offer.replace("BUNDLE 0 1 2 3 4", "BUNDLE 0 1 2 3 4"), 9, 3)
    assert set(info.publish) == {"audio", "video"}  # so the mutations below start from a good offer


@settings(max_examples=150, deadline=None)
@given(ops=sdp_ops)
def test_inspect_offer_accepts_or_explains(real_offer: str, ops) -> None:
    try:
        inspect_offer(_mutate(real_offer, ops), 9, 3)
    except OfferError as exc:
        assert str(exc)


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=300))
def test_inspect_offer_on_random_text(text: str) -> None:
    try:
        inspect_offer(text, 9, 3)
    except OfferError:
        pass


# ---------------------------------------------------------------- live forwarding core


def _graph(router, untouched: set) -> list:
    """The forwarding graph, as identities: every transport's producers and their streams,
    and the slot sources of the transports no garbage was aimed at. (A subscriber's own
    garbage feedback may legitimately lower its own layers; nobody else's.)"""
    out = []
    for pid, t in sorted(router.transports.items()):
        out.append((pid, sorted((k, id(p), tuple(id(s) for s in p.streams)) for k, p in t.producers.items())))
        if pid in untouched:
            out.append([(c.index, id(c.source) if c.source is not None else None) for cs in t.consumers.values() for c in cs])
    return out


@pytest.mark.slow
async def test_malformed_packets_at_the_forwarding_core_change_nothing(hoinghi_server):
    server = hoinghi_server
    hub = SyntheticSite(server.url, server.token("hub", "hub"), fps=15)
    viewer = SyntheticSite(server.url, server.token("xa-watch"), publish_video=False, publish_audio=False)
    bystander = SyntheticSite(server.url, server.token("xa-other"), publish_video=False, publish_audio=False)
    try:
        for p in (hub, viewer, bystander):
            await p.join()
            await p.start_media()
        hub_id = hub.joined["participant"]["id"]
        await until(lambda: all(p.track_for(hub_id) and p.track_for(hub_id).frames > 5 for p in (viewer, bystander)), 15, "media flowing")
        router = server.signaling.rooms["demo"].router
        pub = router.transports[hub_id]
        sub = router.transports[viewer.joined["participant"]["id"]]
        video = pub.producers["video"].streams[0]
        untouched = {bystander.joined["participant"]["id"]}
        before = _graph(router, untouched)
        media_ssrc = video.ssrc
        slot_ssrcs = [c.ssrc for cs in sub.consumers.values() for c in cs]
        assert media_ssrc and slot_ssrcs

        # RTP with the publisher's real SSRC and payload type but garbage after the header:
        # exercises RecvStream.on_rtp, the VP8 descriptor and every subscriber's Consumer.write
        @settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
        @given(seq=st.integers(0, 0xFFFF), ts=st.integers(0, 2**32 - 1), tail=st.binary(max_size=40),
               marker=st.integers(0, 1), pt=st.sampled_from([pub.producers["video"].payload_type, 0, 127]),
               ssrc=st.sampled_from([media_ssrc, 0, 0xFFFFFFFF]))
        def rtp_to_publisher(seq, ts, tail, marker, pt, ssrc):
            pub._on_rtp(_rtp_header(pt, seq, ts, ssrc, marker=marker) + tail)

        @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
        @given(st.one_of(st.binary(max_size=48), rtp_like))
        def raw_to_publisher(data):
            pub._on_rtp(data)

        # RTCP aimed at the subscriber's real slot SSRCs: NACK/PLI/FIR/RR/REMB/transport-cc
        @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
        @given(st.one_of(rtcp_like, st.builds(
            lambda fmt, pt, ssrc, fci: bytes([0x80 | fmt, pt]) + ((8 + len(fci)) // 4).to_bytes(2, "big")
            + (1).to_bytes(4, "big") + ssrc.to_bytes(4, "big") + fci + b"\0" * (-len(fci) % 4),
            st.sampled_from([1, 4, 15, 3]), st.sampled_from([205, 206]), st.sampled_from(slot_ssrcs), st.binary(max_size=40),
        )))
        def rtcp_to_subscriber(data):
            sub._on_rtcp(data)
            pub._on_rtcp(data)

        dropped = pub.dropped_in
        rtp_to_publisher()
        raw_to_publisher()
        rtcp_to_subscriber()
        assert pub.dropped_in > dropped  # the garbage was seen and counted, not silently used
        assert video.stray > 0  # far-off sequence numbers were held back, not believed
        assert _graph(router, untouched) == before  # no producer, stream, or others' slot changed

        # a well-formed packet with odd but legal descriptor values (VP8 TID 3, the largest
        # the 2-bit field holds) in sequence on the real stream: every subscriber's layer
        # allocation must still run (one publisher's packet must not break others' CC)
        vp8_pt = pub.producers["video"].payload_type
        odd = _rtp_header(vp8_pt, (video.max_seq + 1) & 0xFFFF, 0, media_ssrc) + bytes([0x90, 0x20, 0xC0, 0x01, 0x00])
        pub._on_rtp(odd)
        for t in router.transports.values():
            t.allocator.run()

        # the real stream still reaches both subscribers, the untouched one included
        marks = {p: p.track_for(hub_id).frames for p in (viewer, bystander)}
        await until(lambda: all(p.track_for(hub_id).frames > marks[p] + 10 for p in marks), 15, "media flowing after the fuzz")
    finally:
        for p in (hub, viewer, bystander):
            await p.close()


# ---------------------------------------------------------------- live signaling socket


def _frames(rng: random.Random, token: str) -> list:
    """A mix of what a broken or hostile client sends: junk, wrong JSON, wrong types, huge."""
    out: list = []
    for _ in range(60):
        r = rng.random()
        if r < 0.15:
            out.append(bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64))))  # binary frame
        elif r < 0.3:
            out.append("".join(chr(rng.randint(1, 0x2FFF)) for _ in range(rng.randint(0, 80))))
        elif r < 0.4:
            out.append("[" * rng.randint(1, 5000))  # deep nesting
        elif r < 0.45:
            out.append(json.dumps({"type": "join", "token": token, "name": "x" * 70_000}))  # oversized
        else:
            msg = {"type": rng.choice(MESSAGE_TYPES)}
            for f in rng.sample(FIELDS, rng.randint(0, 5)):
                msg[f] = rng.choice([None, True, -1, 2**53, "", "x" * rng.randint(1, 300), [], {}, {"a": [1]}, 1.5])
            if msg["type"] == "join" and rng.random() < 0.3:
                msg["token"] = token[: rng.randint(0, len(token))]  # truncated real token
            out.append(json.dumps(msg))
    return out


@pytest.mark.slow
async def test_fuzzed_websocket_frames_then_a_normal_site_joins_and_media_flows(hoinghi_server):
    server = hoinghi_server
    hub = SyntheticSite(server.url, server.token("hub", "hub"), fps=15)
    await hub.join()
    await hub.start_media()
    hub_id = hub.joined["participant"]["id"]
    rng = random.Random(20261125)
    async with aiohttp.ClientSession() as http:
        for n in range(4):
            ws = await http.ws_connect(server.url.replace("http", "ws") + "/ws", max_msg_size=1 << 22)
            try:
                for frame in _frames(rng, server.token(f"xa-fuzz-{n}")):
                    if ws.closed:
                        break
                    if isinstance(frame, bytes):
                        await ws.send_bytes(frame)
                    else:
                        await ws.send_str(frame)
                # drain what the server said; every reply is a well-formed protocol message
                while True:
                    msg = await ws.receive(timeout=1.0)
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        break
                    body = json.loads(msg.data)
                    assert isinstance(body.get("type"), str)
                    if body["type"] == "error":
                        assert body["code"] != "internal", body  # no handler crashed
            except (asyncio.TimeoutError, ConnectionError):
                pass
            finally:
                await ws.close()
    assert server.signaling.rooms["demo"].router.transports.get(hub_id) is not None  # the hub is untouched
    site = SyntheticSite(server.url, server.token("xa-normal"), publish_video=False, publish_audio=False)
    try:
        await site.join()
        await site.start_media()
        await until(lambda: site.track_for(hub_id) is not None and site.track_for(hub_id).frames > 10, 15, "media to a normal site after the fuzz")
    finally:
        await site.close()
        await hub.close()


@pytest.mark.slow
async def test_mutated_offers_get_an_answer_or_a_reason(hoinghi_server, real_offer):
    """The answer path (aiortc's setRemoteDescription, our transceiver set-up, gathering)
    under offers that are almost right: each gets `answer` or `sdp_invalid`, never an internal
    error, and the server goes on admitting normal sites."""
    server = hoinghi_server
    rng = random.Random(5)
    outcomes = {"answer": 0, "sdp_invalid": 0}
    async with aiohttp.ClientSession() as http:
        for n in range(16):
            ops = [(rng.randint(0, 3), rng.randint(0, 10_000), rng.choice(["", "a=rtcp-mux", "m=video 9 UDP/TLS/RTP/SAVPF 96", "a=mid:0", "a=rid:q send", "a=ssrc:1 cname:x", "a=extmap:99 x", "\x00"])) for _ in range(rng.randint(1, 4))]
            offer = _mutate(real_offer, ops)
            ws = await http.ws_connect(server.url.replace("http", "ws") + "/ws")
            try:
                await ws.send_str(json.dumps({"type": "join", "token": server.token(f"xa-sdp-{n}")}))
                assert json.loads((await ws.receive(timeout=5)).data)["type"] == "joined"
                await ws.send_str(json.dumps({"type": "offer", "id": "o", "sdp": offer}))
                while True:
                    body = json.loads((await ws.receive(timeout=15)).data)
                    if body.get("ref") == "o" and body["type"] != "queued":  # queued: join pacing, wait on
                        break
                if body["type"] == "answer":
                    outcomes["answer"] += 1
                else:
                    assert body["type"] == "error" and body["code"] == "sdp_invalid", body
                    outcomes["sdp_invalid"] += 1
            finally:
                await ws.close()
    print("mutated offers:", outcomes)
    assert outcomes["sdp_invalid"] > 0 and outcomes["answer"] > 0  # both paths were reached (seeded: 12 and 4)
    hub = SyntheticSite(server.url, server.token("hub", "hub"), fps=15)
    site = SyntheticSite(server.url, server.token("xa-after"), publish_video=False, publish_audio=False)
    try:
        await hub.join()
        await hub.start_media()
        await site.join()
        await site.start_media()
        hub_id = hub.joined["participant"]["id"]
        await until(lambda: site.track_for(hub_id) is not None and site.track_for(hub_id).frames > 10, 15, "media after the offers")
    finally:
        await site.close()
        await hub.close()
