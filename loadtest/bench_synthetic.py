"""What the pre-encoded synthetic media costs: encoding once, loading, and sending per packet.

    python -m loadtest.bench_synthetic [--sites 20] [--seconds 10] [--encode]

Sending is measured without a network peer: every site's SimulcastSource (3 layers) and
OpusLoopSource run against a transport that does real SRTP protect (libsrtp, AES-CM-SHA1-80)
and a real UDP sendto to a local socket nobody reads, driven by simulated time in 5 ms ticks
(as MediaPacer does), so the figure is CPU per packet of the generator, not wall time.
`--encode` also times a fresh encode of the default set into a temporary directory.
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
import time

from pylibsrtp import Policy, Session

from media.srtp import SrtpContext

from .media_sender import OpusLoopSource, SimulcastSource
from .media_source import SyntheticMedia, TalkSchedule, luma, read_stamp


class _Transport:
    """The send half of RawTransport: SRTP protect + sendto, counters."""

    def __init__(self) -> None:
        policy = Policy(key=os.urandom(30), ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=Policy.SRTP_PROFILE_AES128_CM_SHA1_80)
        self.tx = SrtpContext(Session(policy=policy))
        self.sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sink.bind(("127.0.0.1", 0))
        self.addr = self.sink.getsockname()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.packets_out = 0

    def send_rtp(self, packet) -> bool:
        try:
            self.sock.sendto(self.tx.protect(packet), self.addr)
        except BlockingIOError:
            pass
        self.packets_out += 1
        return True

    def send_rtcp(self, packet) -> None:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sites", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=10.0, help="simulated seconds of sending")
    ap.add_argument("--encode", action="store_true", help="also time a fresh encode of the default set")
    args = ap.parse_args()

    if args.encode:
        with tempfile.TemporaryDirectory() as d:
            t0, c0 = time.perf_counter(), time.process_time()
            m = SyntheticMedia.load(d)
            print(f"encode once (default: {m.loop_frames} frames x {len(m.layers)} layers x {len(m.layers[0].phases)} phases + Opus): "
                  f"{time.perf_counter() - t0:.1f} s wall, {time.process_time() - c0:.1f} s CPU")
    t0 = time.perf_counter()
    media = SyntheticMedia.load()
    print(f"load (cache hit={media.loaded_from_cache}): {1000 * (time.perf_counter() - t0):.0f} ms")
    for layer in media.layers:
        print(f"  {layer.rid} {layer.spec.width}x{layer.spec.height}: {layer.bitrate(media.fps) / 1000:.0f} kbit/s measured")

    # the measuring receiver's cost per picture: decode (libvpx) + luma plane + stamp
    import av

    for layer in media.layers:
        ctx = av.CodecContext.create("vp8", "r")
        frames = layer.phases[0]
        c0 = time.process_time()
        ok = 0
        for f in frames:
            for pic in ctx.decode(av.Packet(b"".join(p[6:] for p in f.payloads))):
                ok += read_stamp(luma(pic)) is not None
        ms = 1000 * (time.process_time() - c0) / len(frames)
        print(f"  measuring receiver, {layer.rid}: {ms:.2f} ms CPU per picture (decode + stamp), {ok}/{len(frames)} stamps read")

    transport = _Transport()
    sources: list = []
    for i in range(args.sites):
        sources.append(SimulcastSource(transport, media, 96, rtx_payload_type=97, mid="1", mid_id=1, rid_id=10, rrid_id=11,
                                       abs_id=3, rids=media.rids, seed=i))  # type: ignore[arg-type]
        sources.append(OpusLoopSource(transport, media, 1000 + i, 111, mid="0", mid_id=1, audio_level_id=2,  # type: ignore[arg-type]
                                      talk=TalkSchedule.always(), seed=i))
    now = 1000.0
    c0 = time.process_time()
    w0 = time.perf_counter()
    ticks = int(args.seconds / 0.005)
    for _ in range(ticks):
        for s in sources:
            s.tick(now)
        now += 0.005
    cpu = time.process_time() - c0
    wall = time.perf_counter() - w0
    n = transport.packets_out
    video = sum(s.packets for s in sources if isinstance(s, SimulcastSource))
    print(f"{args.sites} sites x {args.seconds:.0f} s simulated: {n} packets ({video} video, {n - video} audio), "
          f"{n / args.seconds / args.sites:.0f} packets/s per site")
    print(f"generator CPU {cpu:.2f} s ({wall:.2f} s wall): {1e6 * cpu / n:.1f} us per packet incl. SRTP + sendto, "
          f"{100 * cpu / args.seconds / args.sites:.2f} % of a core per site")


if __name__ == "__main__":
    main()
