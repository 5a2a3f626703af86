"""The packet codecs of the forwarding core, checked against aiortc's own RTP/RTCP code.

aiortc's parsers and serialisers are the reference: what our fast parser reads must equal
what aiortc wrote, and what our builders write must parse in aiortc to the same values.
"""

from __future__ import annotations

import random

import pytest
from aiortc import rtp as artp
from aiortc.codecs.vpx import VpxPayloadDescriptor
from hypothesis import given, settings
from hypothesis import strategies as st

from media import rtcp, vp8
from media.rtp import (
    URI_ABS_SEND_TIME,
    URI_AUDIO_LEVEL,
    URI_MID,
    URI_RID,
    ext_table,
    parse_rtp,
    seq_newer,
)
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters

IDS = {URI_MID: 1, URI_AUDIO_LEVEL: 2, URI_ABS_SEND_TIME: 3, URI_RID: 4}


def _aiortc_ext_map() -> artp.HeaderExtensionsMap:
    m = artp.HeaderExtensionsMap()
    m.configure(RTCRtpParameters(headerExtensions=[RTCRtpHeaderExtensionParameters(id=i, uri=u) for u, i in IDS.items()]))
    return m


@given(
    seq=st.integers(0, 0xFFFF),
    ts=st.integers(0, 0xFFFFFFFF),
    ssrc=st.integers(0, 0xFFFFFFFF),
    pt=st.integers(0, 127),
    marker=st.integers(0, 1),
    payload=st.binary(min_size=0, max_size=1200),
    mid=st.one_of(st.none(), st.text("0123456789abc", min_size=1, max_size=4)),
    level=st.one_of(st.none(), st.integers(0, 127)),
)
@settings(max_examples=300, deadline=None)
def test_parse_matches_aiortc_serialisation(seq, ts, ssrc, pt, marker, payload, mid, level):
    packet = artp.RtpPacket(payload_type=pt, marker=marker, sequence_number=seq, timestamp=ts, ssrc=ssrc, payload=payload)
    packet.extensions.mid = mid
    if level is not None:
        packet.extensions.audio_level = (True, level)
    data = packet.serialize(_aiortc_ext_map())
    info = parse_rtp(data, ext_table(IDS))
    assert (info.seq, info.ts, info.ssrc, info.pt, info.marker) == (seq, ts, ssrc, pt, marker)
    assert data[info.payload_offset :] == payload
    assert info.mid == mid
    assert info.audio_level == (-1 if level is None else (0x80 | level))


@given(st.binary(max_size=64))
@settings(max_examples=500, deadline=None)
def test_parse_never_crashes_on_garbage(data):
    try:
        info = parse_rtp(data, ext_table(IDS))
    except ValueError:
        return
    assert 12 <= info.payload_offset <= len(data)


def test_padding_is_excluded_from_payload_end():
    packet = artp.RtpPacket(payload_type=96, sequence_number=1, timestamp=2, ssrc=3, payload=b"abc")
    packet.padding_size = 5
    data = packet.serialize()
    assert data[0] & 0x20
    info = parse_rtp(data, ext_table({}))
    assert info.padding == 5 and data[info.payload_offset : len(data) - info.padding] == b"abc"


@pytest.mark.parametrize("picture_id", [0, 17, 127, 128, 4000, 32767])
@pytest.mark.parametrize("keyframe", [True, False])
def test_vp8_descriptor_offsets_and_keyframe(picture_id, keyframe):
    desc = VpxPayloadDescriptor(partition_start=1, partition_id=0, picture_id=picture_id, tl0picidx=9)
    vp8_header = bytes([0x00 if keyframe else 0x01, 0, 0])
    packet = artp.RtpPacket(payload_type=96, sequence_number=1, timestamp=2, ssrc=3, payload=bytes(desc) + vp8_header)
    info = parse_rtp(packet.serialize(), ext_table({}))
    vp8.parse_descriptor(info)
    assert info.keyframe is keyframe
    assert info.vp8_pid_off >= 0
    assert vp8.read_picture_id(info.data, info.vp8_pid_off, info.vp8_pid_wide) == picture_id
    assert info.data[info.vp8_tl0_off] == 9
    buf = bytearray(info.data)
    vp8.write_picture_id(buf, info.vp8_pid_off, info.vp8_pid_wide, (picture_id + 5) & (0x7FFF if info.vp8_pid_wide else 0x7F))
    parsed, _ = VpxPayloadDescriptor.parse(bytes(buf[info.payload_offset :]))
    assert parsed.picture_id == (picture_id + 5) & (0x7FFF if info.vp8_pid_wide else 0x7F)


def test_rtcp_builders_parse_in_aiortc():
    sr = rtcp.pack_sr(0x11223344, rtcp.ntp_now(), 123456, 10, 2000)
    rr = rtcp.pack_rr(0x55, [rtcp.ReportBlock(0x66, 12, 34, 70000, 5, 0xABCD, 0x10)])
    sdes = rtcp.pack_sdes_cname(0x11223344, "hoinghi-x")
    nack = rtcp.pack_nack(1, 2, [100, 101, 105, 117, 118, 300])
    pli = rtcp.pack_pli(1, 2)
    remb = rtcp.pack_remb(1, 2_500_000, [7, 8])
    packets = artp.RtcpPacket.parse(sr + rr + sdes + nack + pli + remb)
    kinds = [type(p).__name__ for p in packets]
    assert kinds == ["RtcpSrPacket", "RtcpRrPacket", "RtcpSdesPacket", "RtcpRtpfbPacket", "RtcpPsfbPacket", "RtcpPsfbPacket"]
    assert packets[0].sender_info.rtp_timestamp == 123456 and packets[0].sender_info.packet_count == 10
    block = packets[1].reports[0]
    assert (block.ssrc, block.fraction_lost, block.packets_lost, block.highest_sequence, block.lsr) == (0x66, 12, 34, 70000, 0xABCD)
    assert sorted(packets[3].lost) == [100, 101, 105, 117, 118, 300]
    bitrate, ssrcs = artp.unpack_remb_fci(packets[5].fci)
    assert abs(bitrate - 2_500_000) / 2_500_000 < 0.001 and ssrcs == [7, 8]


def test_rtcp_parser_reads_aiortc_packets():
    nack = artp.RtcpRtpfbPacket(fmt=artp.RTCP_RTPFB_NACK, ssrc=9, media_ssrc=10)
    nack.lost = [5, 6, 9, 40]
    pli = artp.RtcpPsfbPacket(fmt=artp.RTCP_PSFB_PLI, ssrc=9, media_ssrc=11)
    remb = artp.RtcpPsfbPacket(fmt=artp.RTCP_PSFB_APP, ssrc=9, media_ssrc=0, fci=artp.pack_remb_fci(1_000_000, [3]))
    items = list(rtcp.parse_compound(bytes(nack) + bytes(pli) + bytes(remb)))
    assert items[0] == rtcp.Nack(9, 10, [5, 6, 9, 40])
    assert items[1] == rtcp.Pli(9, 11)
    assert isinstance(items[2], rtcp.Remb) and items[2].ssrcs == [3] and abs(items[2].bitrate - 1_000_000) < 1000


def test_fir_parses_target_from_fci():
    items = list(rtcp.parse_compound(rtcp.pack_fir(1, 0xDEADBEEF, 3)))
    assert items == [rtcp.Fir(1, [(0xDEADBEEF, 3)])]


@given(st.binary(max_size=200))
@settings(max_examples=500, deadline=None)
def test_rtcp_parser_never_crashes(data):
    try:
        list(rtcp.parse_compound(data))
    except ValueError:
        pass


def test_seq_newer_wraps():
    assert seq_newer(1, 65535) and not seq_newer(65535, 1) and not seq_newer(5, 5)
    rng = random.Random(1)
    for _ in range(1000):
        a = rng.randrange(65536)
        d = rng.randrange(1, 32768)
        assert seq_newer((a + d) & 0xFFFF, a)


def test_add_fmtp_appends_or_inserts_in_its_own_section_only():
    from media.sdp import add_fmtp

    sdp = ("v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=rtpmap:111 opus/48000/2\r\na=sendrecv\r\n"
           "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:1\r\na=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10\r\n")
    # no a=fmtp in section 0: one is inserted after its a=rtpmap; section 1 is untouched
    out = add_fmtp(sdp, "0", 111, "usedtx=1").split("\r\n")
    assert out[3:5] == ["a=rtpmap:111 opus/48000/2", "a=fmtp:111 usedtx=1"]
    assert out[5:] == sdp.split("\r\n")[4:]
    # an existing a=fmtp gets the parameter appended; the text still ends as it did
    out = add_fmtp(sdp, "1", 111, "usedtx=1")
    assert "a=fmtp:111 minptime=10;usedtx=1\r\n" in out and out.endswith("\r\n") and out.count("a=fmtp") == 1
    assert add_fmtp(sdp, "7", 111, "usedtx=1") == sdp  # no such mid: unchanged
