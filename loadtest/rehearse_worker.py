"""One process of a multi-process rehearsal (`hoinghi rehearse --processes K`).

A Python process receives and accounts for a few thousand packets per second per core; a
province's 164 sites receive far more, so the parent (loadtest.rehearse) spreads the sites
over K of these. Each runs the same `Rehearsal` on its share: it joins its sites at their
place in the global join order (the parent's start time is shared as wall-clock time),
measures them, and talks to the parent in JSON lines:

    stdout -> parent   {"t_wall": ..., "joined": ..., "bytes": ..., ...}   every --sample s
                       {"joins_done": true}                                once its joins ended
                       {"result": "<path>"}                               at the end
    stdin  <- parent   "steady" (start the measured window), "stop" (end it)

Nothing else may be written to stdout (logging goes to stderr).

    python -m loadtest.rehearse_worker JOB.json RESULT.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path

import aiohttp

from .linkprofile import LinkProfile, SiteSpec
from .rehearse import Rehearsal, Server


class Control:
    """The worker's side of the pipe to the parent."""

    def __init__(self) -> None:
        self.reader: asyncio.StreamReader | None = None

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self.reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(self.reader), sys.stdin)

    def send(self, obj: dict) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    async def wait(self, command: str) -> None:
        assert self.reader is not None
        while True:
            line = await self.reader.readline()
            if not line:  # the parent went away: end as if told to
                return
            if line.decode().strip() == command:
                return


async def run(job: dict, out: Path) -> None:
    args = argparse.Namespace(**job["args"])
    specs = [SiteSpec(s["site_id"], s["name"], s["role"], s["level"], LinkProfile(**s["profile"])) for s in job["specs"]]
    server = Server(job["url"], job["meeting"])
    reh = Rehearsal(args, server, specs)
    control = Control()
    await control.open()
    reh.control = control
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as http:
        result = await reh.run(http, tokens=job["tokens"], order=job["order"], t0_wall=job["t0_wall"])
    result["worker"] = job["worker"]
    out.write_text(json.dumps(result, ensure_ascii=False, default=float))
    control.send({"result": str(out)})


def main() -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    job = json.loads(Path(sys.argv[1]).read_text())
    if job.get("nice"):
        os.nice(int(job["nice"]))
    try:
        import uvloop

        uvloop.run(run(job, Path(sys.argv[2])))
    except ImportError:  # pragma: no cover
        asyncio.run(run(job, Path(sys.argv[2])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
