"""Pre-encoded synthetic media (loadtest/media_source.py), its senders and the measuring receiver.

The encoding is real libvpx/libopus through PyAV; the end-to-end tests run the real hoinghi
app in-process with raw peers (real ICE/DTLS/SRTP on loopback) that send the cached VP8
simulcast layers and Opus, and a receiver that decodes what the SFU forwards and reads the
stamps back. The default media set is encoded once into ~/.cache/hoinghi (or $HOINGHI_CACHE)
and reused by later runs.
"""

from __future__ import annotations

import asyncio
import math
import time

import aiohttp
import av
import numpy as np
import pytest

from loadtest import media_source
from loadtest.measure import MeasuringReceiver
from loadtest.media_sender import munge_simulcast_offer
from loadtest.media_source import FrameClock, LayerSpec, Scene, SyntheticMedia, TalkSchedule, read_stamp
from loadtest.rawpeer import FeedbackTicker, HoinghiSite, RawPeer
from media import rtcp
from media.rtp import URI_RID, URI_RRID
from media.sdp import inspect_offer

#: a small set for the fast tests: one 320x180 layer, one keyframe phase, 2.5 s
SMALL = (LayerSpec("q", 320, 180, 150_000),)


@pytest.fixture(scope="module")
def media() -> SyntheticMedia:
    # 5 s loop, 3 layers: encoded once per machine (about a minute on one busy core), then cached
    return SyntheticMedia.load(seconds=5.0)


def _decode(frames) -> list:
    """Decode EncodedFrames in order; the luma plane of every picture."""
    ctx = av.CodecContext.create("vp8", "r")
    out = []
    for f in frames:
        data = b"".join(p[6:] for p in f.payloads)  # strip the 6-byte descriptor
        out += [media_source.luma(pic) for pic in ctx.decode(av.Packet(data))]
    return out


# --------------------------------------------------------------------------- encoding, stamp, cache


def test_stamp_reads_back_from_the_drawn_picture_and_refuses_a_corrupt_one():
    scene = Scene(320, 180, 100, "xa-test", variant=7)
    for i in (0, 1, 57, 99):
        gray = np.ascontiguousarray(scene.draw(i)[:, :, 1])
        assert read_stamp(gray) == media_source.Stamp(i, 7)
    gray = np.ascontiguousarray(scene.draw(42)[:, :, 1])
    x0, y0, x1, y1 = media_source._cell_boxes(320, 180)[5]
    gray[y0:y1, x0:x1] = 255 - gray[y0:y1, x0:x1]  # one bit flipped: the CRC refuses it
    assert read_stamp(gray) is None


def test_cache_second_load_is_identical_and_does_not_encode(tmp_path, monkeypatch):
    first = SyntheticMedia.load(tmp_path, seconds=2.5, layers=SMALL, keyframe_interval=0.5, key_step=0.5, label="cache-test")
    assert not first.loaded_from_cache
    assert len(list(tmp_path.glob("synthetic-*.bin"))) == 1

    def no_encoding(params):
        raise AssertionError("encoded again although the cache holds these parameters")

    monkeypatch.setattr(media_source, "encode_media", no_encoding)
    second = SyntheticMedia.load(tmp_path, seconds=2.5, layers=SMALL, keyframe_interval=0.5, key_step=0.5, label="cache-test")
    assert second.loaded_from_cache and second.key == first.key
    for a, b in zip(first.layers, second.layers):
        assert [[f.payloads for f in ph] for ph in a.phases] == [[f.payloads for f in ph] for ph in b.phases]
        assert a.key_phases == b.key_phases
    assert first.audio.packets == second.audio.packets and first.audio.levels == second.audio.levels
    # other parameters are another entry, not a stale hit
    with pytest.raises(AssertionError, match="encoded again"):
        SyntheticMedia.load(tmp_path, seconds=2.5, layers=SMALL, keyframe_interval=0.5, key_step=0.5, label="another label")
    monkeypatch.undo()
    # a damaged file is re-encoded, not trusted
    path = next(tmp_path.glob("synthetic-*.bin"))
    path.write_bytes(path.read_bytes()[:1000])
    third = SyntheticMedia.load(tmp_path, seconds=2.5, layers=SMALL, keyframe_interval=0.5, key_step=0.5, label="cache-test")
    assert not third.loaded_from_cache  # (libvpx in real-time mode is not bit-exact run to run)
    # 2.5 s at 20 fps, rounded to whole keyframe intervals of a multiple of the 4-frame temporal pattern: 40
    assert len(third.layers[0].phases[0]) == len(first.layers[0].phases[0]) == 40


def test_audio_levels_follow_the_speech_and_silence_is_silent(tmp_path):
    m = SyntheticMedia.load(tmp_path, seconds=2.0, layers=SMALL, keyframe_interval=0.5, key_step=0.5, audio_seed=3)
    a = m.audio
    assert len(a.packets) == len(a.levels) == 100  # 2 s of 20 ms packets
    voiced = [lv for lv in a.levels if lv < 50]
    pauses = [lv for lv in a.levels if lv > 60]
    assert len(voiced) > 0.3 * len(a.levels) and pauses, a.levels  # words, with pauses between
    assert min(a.levels) < 30  # speech peaks well above the -50 dBov speech threshold
    assert a.silence_level == 127 and 0 < len(a.silence) < np.median([len(p) for p in a.packets])
    # the Opus packets really decode, to about the level recorded for them
    ctx = av.CodecContext.create("opus", "r")
    pcm = np.concatenate([f.to_ndarray().reshape(-1) for p in a.packets for f in ctx.decode(av.Packet(p))])
    rms = float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2)))
    assert rms > 0.01
    talk = TalkSchedule([(1.0, 2.0)])
    assert not talk.is_talking(0.5) and talk.is_talking(1.5) and not talk.is_talking(2.0)
    assert TalkSchedule.silent().is_talking(3) is False and TalkSchedule.always().is_talking(3)


def test_frame_clock_maps_a_loop_index_back_to_the_frame():
    clock = FrameClock(start=100.0, fps=20, loop=100, offset=37)
    for n in (0, 1, 62, 63, 99, 100, 1234):
        idx = (n + clock.offset) % clock.loop
        for latency in (0.0, 0.049, 0.4, 4.9):
            assert clock.frame_for(idx, clock.send_time(n) + latency) == n
    assert FrameClock.from_dict(clock.to_dict()) == clock


@pytest.mark.slow
def test_stamp_survives_vp8_at_every_layer_and_phase(media):
    assert [(l.spec.width, l.spec.height) for l in media.layers] == [(320, 180), (640, 360), (1280, 720)]
    loop, step = media.loop_frames, media.key_step
    for layer in media.layers:
        rate = layer.bitrate(media.fps)
        assert 0.5 * layer.spec.bitrate < rate < 1.6 * layer.spec.bitrate, (layer.rid, rate)
        for p, frames in enumerate(layer.phases):
            order = [(p * step + k) % loop for k in range(loop)]
            assert frames[order[0]].key
            pictures = _decode([frames[i] for i in order])
            assert len(pictures) == loop
            assert pictures[0].shape == (layer.spec.height, layer.spec.width)
            stamps = [read_stamp(g) for g in pictures]
            assert [s.frame if s else None for s in stamps] == order, (layer.rid, p)
    # a keyframe request switches phase at that phase's keyframe: the decoder goes on cleanly
    f = media.layers[-1]
    assert f.key_phases[step] == (1,)  # phase k has its keyframes at k * step (+ n * gop)
    frames = [f.phases[0][i] for i in range(step)] + [f.phases[1][i] for i in range(step, step + 20)]
    got = [read_stamp(g) for g in _decode(frames)]
    assert [s.frame for s in got] == list(range(step)) + list(range(step, step + 20))


def test_layers_are_l1t3_and_a_thinned_stream_decodes_to_the_same_pictures(tmp_path):
    """Like Chrome's, every layer is VP8 L1T3: an SFU that forwards only TIDs <= t (1/4 or 1/2
    of the frame rate) gives the receiver's decoder exactly the pictures the full stream has
    at those frames. Without temporal layers the same thinning corrupts the pictures, which
    is what this test would catch if the encoder's reference structure were lost."""
    media = SyntheticMedia.load(tmp_path, seconds=2.5, layers=SMALL, keyframe_interval=0.5, key_step=0.5)
    assert media.gop % len(media_source.TEMPORAL_PATTERN) == 0  # every keyframe is a base-layer frame
    layer = media.layers[0]
    for p, frames in enumerate(layer.phases):
        order = [(p * media.key_step + k) % media.loop_frames for k in range(media.loop_frames)]
        tids = [frames[i].tid for i in order]
        assert tids == [media_source.TEMPORAL_PATTERN[k % 4] for k in range(len(order))]
        assert all(frames[i].tid == 0 for i in order if frames[i].key)
        # the descriptor carries the TID, and Y (sync) everywhere but on the TID 2 frame after a TID 1
        assert [frames[i].payloads[0][5] >> 6 for i in order] == tids
        assert [bool(frames[i].payloads[0][5] & 0x20) for i in order] == [k % 4 != 3 for k in range(len(order))]
        full = _decode([frames[i] for i in order])
        for t in (0, 1):
            kept = [k for k in range(len(order)) if tids[k] <= t]
            thin = _decode([frames[order[k]] for k in kept])
            assert len(thin) == len(kept)
            assert all(np.array_equal(pic, full[k]) for pic, k in zip(thin, kept)), (p, t)
    sizes = [sum(f.size for f in layer.phases[0] if f.tid == t and not f.key) for t in (0, 1, 2)]
    assert sizes[0] > sizes[1] and sizes[0] > 0.25 * sum(sizes)  # the base layer carries the most
    flat = SyntheticMedia.load(tmp_path, seconds=2.5, layers=SMALL, keyframe_interval=0.5, key_step=0.5, temporal_layers=1)
    frames = flat.layers[0].phases[0]
    assert {f.tid for f in frames} == {0}
    assert all(f.payloads[0][5] == 0x20 for f in frames)  # TID 0, Y set: no pattern without temporal layers
    full = _decode(frames)
    thin = _decode([f for k, f in enumerate(frames) if k % 4 == 0])
    assert not all(np.array_equal(pic, full[4 * n]) for n, pic in enumerate(thin))


async def test_offer_is_read_by_the_server_as_three_layers(tmp_path):
    media = SyntheticMedia.load(tmp_path, seconds=2.5, layers=SMALL, keyframe_interval=0.5, key_step=0.5)
    peer = RawPeer("x", publish_video=True, publish_audio=True, video_slots=2, audio_slots=1, media=media, simulcast=True)
    try:
        sdp = await peer.create_offer()
    finally:
        await peer.close()
    info = inspect_offer(sdp, 9, 3)
    video = info.publish["video"]
    assert video.rids == ["q"]  # SMALL has one layer; the default set gives q, h, f
    assert video.ssrcs == [] and video.fid == {}  # a browser's simulcast offer has no a=ssrc
    assert URI_RID in video.extensions and URI_RRID in video.extensions
    three = munge_simulcast_offer(sdp.replace("a=rid:q send\r\n", "").replace("a=simulcast:send q\r\n", ""), video.mid, ["f", "q", "h"])
    assert inspect_offer(three, 9, 3).publish["video"].rids == ["q", "h", "f"]  # lowest first
    assert len(info.slots["video"]) == 2 and len(info.slots["audio"]) == 1


# --------------------------------------------------------------------------- end to end


async def _wait(pred, timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        await asyncio.sleep(step)
    return bool(pred())


def room_streams(server, pub: HoinghiSite) -> list:
    room = server.signaling.rooms["demo"]
    return room.router.transports[pub.participant_id].producers["video"].streams


async def _site(http, server, site: str, role: str = "site", **kw) -> HoinghiSite:
    return HoinghiSite(http, server.url, server.token(site, role), site, **kw)


async def _connect(peer: HoinghiSite) -> None:
    await peer.join()
    await peer.negotiate()
    await peer.wait_connected()


@pytest.mark.slow
async def test_simulcast_publisher_to_a_measuring_receiver(hoinghi_server, media):
    """1 simulcast publisher (talking) + 1 single-encoding publisher (silent) + 1 measuring
    receiver for ~5 s: frames decoded with increasing numbers, finite latency, 3 layers at
    the server, and the server's speaker detection picks the talking site."""
    async with aiohttp.ClientSession() as http:
        pub = await _site(http, hoinghi_server, "hub", "hub", publish_audio=True, media=media, simulcast=True,
                          talk=TalkSchedule.always(), feedback="rr", seed=1)
        quiet = await _site(http, hoinghi_server, "xa-quiet", publish_audio=True, media=media,
                            talk=TalkSchedule.silent(), feedback="rr", seed=2)
        viewer = await _site(http, hoinghi_server, "xa-viewer", publish_video=False, video_slots=2, audio_slots=1)
        meter = MeasuringReceiver(viewer, sample=2)
        ticker = FeedbackTicker([viewer, pub, quiet])
        ticker.start()
        try:
            for p in (pub, quiet):
                await _connect(p)
                await p.start_media()
            await _connect(viewer)
            assert await _wait(lambda: meter.meters and all(m.frames > 5 for m in meter.meters.values()), 15), meter.report()
            # h and f may have been paused (publish_layers) before anyone watched: the viewer's
            # slot climbing asks for them again
            streams = room_streams(hoinghi_server, pub)
            assert await _wait(lambda: all(s.received > 0 for s in streams), 15), [s.received for s in streams]
            await asyncio.sleep(5.0)
            meter.flush()
            report = meter.report()
        finally:
            await ticker.stop()
            room = hoinghi_server.signaling.rooms["demo"]
            transport = room.router.transports[pub.participant_id]
            streams = [(s.rid, s.received, s.keyframes) for s in transport.producers["video"].streams]
            dominant = room.router.speakers.dominant
            await asyncio.gather(pub.close(), quiet.close(), viewer.close(), return_exceptions=True)
            meter.close()

    by_site = {s["site_id"]: s for s in report["slots"]}
    assert set(by_site) == {"hub", "xa-quiet"}, report
    src = pub.simulcast_source
    assert src is not None and [l.rid for l in src.layers] == ["q", "h", "f"]
    hub = by_site["hub"]
    numbers = list(meter.meters[hub["index"]].numbers)
    assert len(numbers) > 40, hub
    # increasing frame numbers, consistent with what was sent (a layer switch may show one
    # moment twice: the old layer's frame, then the new layer's keyframe of the same time)
    assert all(b >= a for a, b in zip(numbers, numbers[1:])), numbers
    assert hub["repeated"] <= hub["layer_changes"], hub
    assert len(set(numbers)) >= 0.7 * (numbers[-1] - numbers[0] + 1), hub
    assert numbers[-1] <= src.next_frame and src.next_frame - numbers[-1] < 2 * media.fps
    assert hub["out_of_order"] == 0 and hub["stamp_errors"] == 0, hub
    lat = hub["latency_ms"]
    assert lat["n"] == len(numbers) and math.isfinite(lat["p50"]) and 0 < lat["min"] and lat["p50"] < 1000, lat
    assert hub["fps"] > 10, hub
    assert set(hub["resolutions"]) <= {"320x180", "640x360", "1280x720"}
    # the single-encoding publisher sends its top layer only
    quiet_slot = by_site["xa-quiet"]
    assert set(quiet_slot["resolutions"]) == {"1280x720"} and quiet_slot["frames"] > 40, quiet_slot
    # the server received all three layers of the simulcast publisher, each with keyframes
    assert [rid for rid, _, _ in streams] == ["q", "h", "f"]
    assert all(received > 20 and keys >= 1 for _, received, keys in streams), streams
    # real audio levels: the talking site is the dominant speaker, the silent one is not
    assert dominant == pub.participant_id
    assert pub.audio_source.talking_packets > 200 and quiet.audio_source.talking_packets == 0
    # the server's answer asked both for Opus DTX (usedtx=1), which they follow as a browser
    # does: the silent site sends one packet per 400 ms, the talking one all 50 per second
    assert "usedtx=1" in quiet.answer_sdp and pub.audio_source.dtx and quiet.audio_source.dtx
    assert pub.audio_source.dtx_skipped == 0 and quiet.audio_source.dtx_skipped > 5 * quiet.audio_source.packets > 0
    assert quiet.audio_source.packets < 0.1 * pub.audio_source.packets, (quiet.audio_source.packets, pub.audio_source.packets)
    assert report["rtp"]["bad_srtp"] == 0


@pytest.mark.slow
async def test_pli_keyframe_nack_rtx_and_publish_layers_per_layer(hoinghi_server, media):
    async with aiohttp.ClientSession() as http:
        pub = await _site(http, hoinghi_server, "hub", "hub", media=media, simulcast=True, feedback="rr")
        viewer = await _site(http, hoinghi_server, "xa-viewer", publish_video=False, video_slots=1, audio_slots=0)
        ticker = FeedbackTicker([viewer, pub])
        ticker.start()
        try:
            await _connect(pub)
            await pub.start_media()
            await _connect(viewer)
            src = pub.simulcast_source
            room = hoinghi_server.signaling.rooms["demo"]
            transport = room.router.transports[pub.participant_id]
            streams = transport.producers["video"].streams
            assert await _wait(lambda: all(s.received > 10 for s in streams), 15), [s.received for s in streams]
            # the lowest layer: the only one the server never pauses (publish_layers), so the
            # keyframe's delay is the sender's alone
            q_server = streams[0]
            q = src.layers[0]
            assert q.rid == "q" and q_server.rid == "q" and q_server.ssrc == q.ssrc
            # a real PLI over SRTCP from the server's transport for this layer
            before = (q.keyframe_requests, len(q.key_delays), q_server.keyframes)
            transport.send_rtcp(rtcp.pack_pli(transport.rtcp_ssrc, q.ssrc))
            assert await _wait(lambda: len(q.key_delays) > before[1], 3)
            assert q.keyframe_requests >= before[0] + 1  # (the server may ask too, e.g. on a layer switch)
            # the keyframe of the phase whose keyframe comes first: within key_step frames
            assert 0 <= q.key_delay_frames[-1] <= media.key_step, q.key_delay_frames
            assert await _wait(lambda: q_server.keyframes > before[2], 2)  # and it reached the server

            # a NACK is answered with RTX on the layer's RTX SSRC, which the server binds to
            # the layer by the repaired-rid extension
            retransmitted = q.retransmitted
            transport.send_rtcp(rtcp.pack_nack(transport.rtcp_ssrc, q.ssrc, [(q.seq - 2) & 0xFFFF]))
            assert await _wait(lambda: q.retransmitted > retransmitted, 2)
            assert await _wait(lambda: q_server.rtx_ssrc == q.rtx_ssrc, 2), (q_server.rtx_ssrc, q.rtx_ssrc)

            # nobody watches any more: the server asks for q only, and h/f stop
            await viewer.close()
            assert await _wait(lambda: pub.publish_layers == ["q"], 15), pub.publish_layers
            await asyncio.sleep(0.3)
            sent = [l.packets for l in src.layers]
            await asyncio.sleep(1.0)
            now = [l.packets for l in src.layers]
            assert now[0] > sent[0] and now[1] == sent[1] and now[2] == sent[2], (sent, now)
            assert [l.active for l in src.layers] == [True, False, False]
        finally:
            await ticker.stop()
            await asyncio.gather(pub.close(), viewer.close(), return_exceptions=True)


@pytest.mark.slow
async def test_simulcast_through_media_worker_processes(hoinghi_workers, media):
    """The same sites against the server as production runs it (media in worker processes):
    what the receiver decodes is the publisher's frames in order, and the server's link
    statistics show each of the three layers arriving."""
    async with aiohttp.ClientSession() as http:
        pub = await _site(http, hoinghi_workers, "hub", "hub", media=media, simulcast=True, feedback="rr", seed=5)
        viewer = await _site(http, hoinghi_workers, "xa-viewer", publish_video=False, video_slots=1, audio_slots=0)
        meter = MeasuringReceiver(viewer, sample=[0])
        ticker = FeedbackTicker([viewer, pub])
        ticker.start()
        seen_active: set = set()

        def layers_seen() -> bool:
            stats = hoinghi_workers.signaling.rooms["demo"].router.participant_stats(pub.participant_id) or {}
            for layer in stats.get("published", {}).get("video", {}).get("layers", []):
                if layer.get("active"):
                    seen_active.add(layer["rid"])
            return seen_active == {"q", "h", "f"}

        try:
            await _connect(pub)
            await pub.start_media()
            await _connect(viewer)
            assert await _wait(layers_seen, 20, 0.25), seen_active
            assert await _wait(lambda: 0 in meter.meters and meter.meters[0].frames > 60, 15), meter.report()
            meter.flush()
            report = meter.report()
        finally:
            await ticker.stop()
            await asyncio.gather(pub.close(), viewer.close(), return_exceptions=True)
            meter.close()
    slot = report["slots"][0]
    assert slot["site_id"] == "hub"
    numbers = list(meter.meters[0].numbers)
    assert len(numbers) > 40 and all(b >= a for a, b in zip(numbers, numbers[1:])), str((numbers, slot))
    # a moment shown twice only where the layer changed (old layer's frame, new layer's keyframe)
    assert slot["out_of_order"] == 0 and slot["repeated"] <= slot["layer_changes"], slot
    assert len(set(numbers)) >= 0.7 * (numbers[-1] - numbers[0] + 1), slot
    print("through workers:", slot["latency_ms"], slot["resolutions"])
    assert slot["stamp_errors"] == 0 and math.isfinite(slot["latency_ms"]["p50"]) and slot["latency_ms"]["p50"] < 1000, slot


def test_the_freeze_watchdog_skips_every_hole_the_jitter_buffer_waits_on():
    """After a burst of loss aiortc's jitter buffer holds many holes and waits on the first
    until it overflows; the synthetic site's watchdog (a frozen decoder, as libwebrtc gives
    up on frames it cannot complete) moves it past all of them at once, not one per tick
    (one per 0.25 s froze the stage 5 s after a 60 % loss burst at 800 kbit/s)."""
    from aiortc.jitterbuffer import JitterBuffer
    from aiortc.rtp import RtpPacket

    from loadtest.peer import SyntheticSite

    class _Receiver:
        pass

    rx = _Receiver()
    jb = JitterBuffer(capacity=128, is_video=True)
    rx._RTCRtpReceiver__jitter_buffer = jb  # type: ignore[attr-defined]
    present = [s for s in range(100, 160) if s % 7 not in (3, 4)]  # a hole every 7 packets
    for seq in present:
        jb.add(RtpPacket(payload_type=96, sequence_number=seq, timestamp=seq // 3 * 3000, payload=b"\x10\x00"))
    assert jb._origin == 100
    SyntheticSite._skip_missing(rx)
    last_hole = max(s for s in range(100, 160) if s not in present)
    assert jb._origin == last_hole + 1  # past every hole, at the first packet after the last one
    SyntheticSite._skip_missing(rx)  # nothing left to skip
    assert jb._origin == last_hole + 1


def test_the_watchdog_jumps_to_a_keyframe_past_a_hole():
    """A complete keyframe behind a hole is decoded at once, as libwebrtc's frame buffer drops
    the older frames it cannot complete: the synthetic receiver showed a switch to a lower
    layer 3-7 s after the SFU made it, waiting on holes a loss burst left before it."""
    from aiortc.jitterbuffer import JitterBuffer
    from aiortc.rtp import RtpPacket

    from loadtest.peer import SyntheticSite, _vp8_keyframe_start

    desc = bytes([0x90, 0xE0, 0x80, 0x01, 0x00, 0x20])  # X, S, partition 0; I (15-bit), L, T
    key, delta, middle = desc + b"\x10\x02\x00", desc + b"\x11\x02\x00", bytes([0x80, 0xE0, 0x80, 0x01, 0x00, 0x20]) + b"\x00"
    assert _vp8_keyframe_start(key) and not _vp8_keyframe_start(delta) and not _vp8_keyframe_start(middle)
    assert _vp8_keyframe_start(b"\x10\x10\x02") and not _vp8_keyframe_start(b"\x00\x10")  # no X byte

    class _Receiver:
        pass

    rx = _Receiver()
    jb = JitterBuffer(capacity=128, is_video=True)
    rx._RTCRtpReceiver__jitter_buffer = jb  # type: ignore[attr-defined]

    def add(seq: int, ts: int, payload: bytes) -> None:
        packet = RtpPacket(payload_type=96, sequence_number=seq, timestamp=ts, payload=payload)
        packet._data = payload[6:]  # what aiortc's receiver sets (the depayloaded bytes)
        jb.add(packet)

    add(10, 1000, delta)  # an old frame, its end lost (11)...
    add(12, 2000, delta)  # ...another one, then a hole at 13-14...
    add(15, 3000, delta)
    add(17, 4000, key)  # ...another at 16, then the new layer's keyframe
    add(18, 4000, middle)
    assert jb._origin == 10  # aiortc waits on the holes
    SyntheticSite._jump_to_keyframe(rx)
    assert jb._origin == 17
    SyntheticSite._jump_to_keyframe(rx)  # no hole before it any more: nothing moves
    assert jb._origin == 17
