"""Micro-benchmark of the per-packet forwarding path, in one process, on the real classes.

A real WebRtcTransport per subscriber (real libsrtp session, real UDP socket on loopback
sending to a discard socket), a real Producer/RecvStream, real VP8 RTP packets as Chrome
sends them (descriptor with 15-bit PictureID, transport-cc-less header extensions). It runs
`WebRtcTransport._on_rtp` for the publisher — parse, stream bookkeeping, VP8 descriptor,
fan-out to N Consumers (rewrite, history, SRTP, sendto) — and reports CPU microseconds per
forwarded packet. No ICE/DTLS handshake: those cost nothing per packet.

    .venv/bin/python -m loadtest.bench_path --subscribers 1,10,60 --packets 20000 [--cc] [--uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import struct
import time

from pylibsrtp import Policy, Session

from media.consumer import Consumer
from media.fastpath import NATIVE
from media.producer import Producer
from media.rtp import URI_ABS_SEND_TIME, URI_MID, ext_table
from media.srtp import SrtpContext
from media.transport import MediaSettings, WebRtcTransport


class _Router:
    def transport_connected(self, t) -> None: ...
    def stream_started(self, s) -> None: ...


def _srtp_pair() -> Session:
    key = os.urandom(30)
    return Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND))


def _packet(seq: int, ts: int, pid: int, keyframe: bool, size: int = 1100) -> bytes:
    ext = bytes([0xBE, 0xDE, 0x00, 0x01, (3 << 4) | 2, 0, 0, 0])
    header = struct.pack("!BBHII", 0x90, 96 | (0x80 if seq % 4 == 3 else 0), seq & 0xFFFF, ts, 0x1234) + ext
    desc = bytes([0x90, 0x80, 0x80 | (pid >> 8), pid & 0xFF])
    vp8 = bytes([0x00 if keyframe else 0x01, 0, 0])
    return header + desc + vp8 + bytes(size - len(desc) - len(vp8))


async def run(subscribers: int, packets: int, cc: bool = False) -> dict:
    settings = MediaSettings()
    router = _Router()
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    addr = sink.getsockname()
    loop = asyncio.get_running_loop()
    publisher = WebRtcTransport(router, "pub", settings)
    publisher.ext_kinds = ext_table({URI_MID: 1, URI_ABS_SEND_TIME: 3})
    producer = Producer(publisher, "video", "1", "video/vp8", 90000, 96, 97, {"nack", "nack pli"}, [])
    stream = producer.streams[0]
    stream.ssrc = 0x1234
    publisher.producers["video"] = producer
    publisher._media_streams[0x1234] = stream
    transports = []
    for i in range(subscribers):
        t = WebRtcTransport(router, f"sub{i}", settings)
        t._tx = SrtpContext(_srtp_pair())
        transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
        t._sendto = transport.sendto
        t._addr = addr
        if NATIVE:  # as _install_fast_path does once DTLS is up
            t._bind_direct(transport.get_extra_info("socket"))
        c = Consumer(t, "video", 0, "2", 1000 + i, 96, 90000, 2000 + i, 97, abs_send_time_id=3, nack=True,
                     transport_cc_id=5 if cc else 0)
        if cc:  # as in production: transport-wide seq + send history, a pacer that never has to wait
            t.set_pacing(1e9)
        c.assign(producer)
        t.consumers["video"].append(c)
        transports.append((t, transport))
    # the sink never reads: once its buffer is full the kernel drops silently, so the
    # process under measurement pays only for sending
    data = [_packet(i, 3000 * (i // 4), (i // 4) & 0x7FFF, i % 400 == 0) for i in range(packets)]
    # warm up (first keyframe switches every consumer onto the stream)
    for d in data[:400]:
        publisher._on_rtp(d)
    start_cpu = time.process_time()
    start = time.perf_counter()
    for d in data[400:]:
        publisher._on_rtp(d)
    cpu = time.process_time() - start_cpu
    wall = time.perf_counter() - start
    forwarded = sum(c.packets for t, _ in transports for c in t.consumers["video"]) - 400 * subscribers
    for t, transport in transports:
        transport.close()
    sink.close()
    return {
        "subscribers": subscribers,
        "forwarded": forwarded,
        "us_per_forwarded": round(cpu * 1e6 / max(1, forwarded), 2),
        "forwarded_per_cpu_s": round(forwarded / cpu),
        "wall_s": round(wall, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subscribers", default="1,10,60")
    ap.add_argument("--packets", type=int, default=20000)
    ap.add_argument("--uvloop", action="store_true")
    ap.add_argument("--cc", action="store_true", help="transport-cc stamping and a (never waiting) pacer, as with browsers")
    args = ap.parse_args()
    if args.uvloop:
        import uvloop

        uvloop.install()
    print(f"per-copy path: {'native (media/_fastpath.c)' if NATIVE else 'Python (HOINGHI_NATIVE=0 or not built)'}")
    for n in (int(x) for x in args.subscribers.split(",")):
        r = asyncio.run(run(n, args.packets, args.cc))
        print(
            f"1 -> {r['subscribers']:>3}: {r['forwarded']:>8} forwarded, {r['us_per_forwarded']:>6} us CPU per forwarded packet, "
            f"{r['forwarded_per_cpu_s']:>7} forwarded packets per CPU-second"
        )


if __name__ == "__main__":
    main()
