"""Summarise a py-spy profile recorded with `--format raw` (collapsed stacks): the frames
with the most samples, by self time (the frame on top of the stack) and inclusive time.

    .venv/bin/py-spy record --pid PID --duration 15 --rate 250 --nonblocking --format raw -o prof.raw
    .venv/bin/python -m loadtest.profile_top prof.raw 15

Without --native, time spent inside a C function called from Python is charged to the
calling Python line; on CPython 3.11 it often shows on the line *after* the call.
"""

from __future__ import annotations

import collections
import sys


def top(path: str, k: int = 15) -> str:
    self_count: collections.Counter = collections.Counter()
    incl: collections.Counter = collections.Counter()
    total = 0
    with open(path) as f:
        for line in f:
            line = line.rstrip()
            if not line:
                continue
            stack, _, n = line.rpartition(" ")
            count = int(n)
            total += count
            frames = stack.split(";")
            self_count[frames[-1]] += count
            for frame in set(frames):
                incl[frame] += count
    out = [f"total samples {total}", "--- self"]
    out += [f"{100 * n / total:5.1f}%  {f}" for f, n in self_count.most_common(k)]
    out.append("--- inclusive")
    out += [f"{100 * n / total:5.1f}%  {f}" for f, n in incl.most_common(k)]
    return "\n".join(out)


if __name__ == "__main__":
    print(top(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 15))
