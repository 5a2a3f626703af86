"""Micro-benchmark: CPU per packet of downlink congestion control on the send side.

Builds the transport-cc feedback a browser sends (every 100 ms) for a synthetic 30 fps video
stream with N packets per frame sent back to back, then times what the SFU does with it:
parse the feedback, look each packet up in the send history, and run the estimator (loss,
acked rate, packet groups, delay detector, AIMD). Also times the per-packet stamp
(`SendHistory.next`). One process, no sockets: the figures are the Python cost alone.

    .venv/bin/python -m loadtest.bench_feedback
    .venv/bin/python -m loadtest.bench_feedback --code DIR   # another tree, e.g. a git archive of an older commit
"""

from __future__ import annotations

import argparse
import importlib
import random
import sys
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--code", help="import media/ from this directory instead of the working tree")
    ap.add_argument("--seconds", type=float, default=100.0, help="stream length simulated")
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--packets-per-frame", type=int, default=4)
    ap.add_argument("--passes", type=int, default=5, help="report the best of this many passes")
    args = ap.parse_args()
    if args.code:
        sys.path.insert(0, args.code)
    twcc = importlib.import_module("media.twcc")
    estimator = importlib.import_module("media.estimator")

    rng = random.Random(1)
    hist = twcc.SendHistory()
    feedbacks = []
    pending: list = []
    t, next_fb, count = 0.0, 0.1, 0
    while t < args.seconds:
        t += 1.0 / args.fps
        for j in range(args.packets_per_frame):
            send = t + j * 0.0002
            hist.next(send, 1100)
            pending.append(None if rng.random() < 0.002 else send + 0.02 + rng.random() * 0.001)
        if t >= next_fb:
            base = (hist.seq - len(pending)) & 0xFFFF
            feedbacks.append((twcc.build_feedback(1, 2, base, pending, count)[12:], t))
            pending, count = [], count + 1
            next_fb += 0.1
    times, sizes, seqs = hist.times, hist.sizes, hist.seqs
    mask = len(seqs) - 1
    new_api = hasattr(twcc, "parse_arrivals")
    best = float("inf")
    n = 0
    for _ in range(args.passes):
        est = estimator.BandwidthEstimator(0.0)
        n = 0
        t0 = time.process_time()
        for payload, now in feedbacks:
            if new_api:  # as media/transport.py does now
                base, arrivals = twcc.parse_arrivals(payload)
                packets = [
                    (times[i], sizes[i], a) for seq, a in enumerate(arrivals, base) if seqs[i := seq & mask] == (seq & 0xFFFF)
                ]
                n += len(packets)
                est.on_feedback(packets, now)
            else:  # as media/transport.py did before
                packets = []
                for seq, a in twcc.parse_feedback(payload):
                    i = seq & mask
                    if seqs[i] == seq:
                        packets.append((times[i], sizes[i], a))
                n += len(packets)
                est.on_twcc(packets, now)
        best = min(best, time.process_time() - t0)
    t0 = time.process_time()
    for k in range(n):
        hist.next(k * 0.001, 1100)
    stamp = time.process_time() - t0
    print(
        f"{args.code or 'working tree'}: feedback handling {best / n * 1e6:.2f} us per packet "
        f"({n} packets, best of {args.passes}); stamping {stamp / n * 1e6:.2f} us per packet"
    )


if __name__ == "__main__":
    main()
