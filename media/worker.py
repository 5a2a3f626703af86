"""A media worker process: the forwarding core for the sites placed on it.

`hoinghi serve --workers N` starts N of these (one per core by default). The control
process (signaling, storage, console) places each site on one worker, which owns its
WebRtcTransport (ICE, DTLS, SRTP, RTP in and out); the sites of other workers appear in
this worker's Router as remote producers fed by pipes (media/pipe.py). A Python process
forwards on one core, so this is how one meeting uses all of a machine's cores.

The control channel is a Unix socket pair inherited from the control process: frames of a
4-byte length and a pickled dict (both ends are this program; nothing from the network is
ever unpickled). Requests carry `op`; events carry `ev`; a request with an `id` gets a
`reply` with the same id. See media/pool.py for the other end.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import pickle
import resource
import socket
import struct
import sys
import time
from bisect import bisect_left
from typing import Any, Optional

from .budget import EgressBudget
from .gcpolicy import POLICY
from .pipe import PipeEndpoint, PipeOrigin, PipeRecvStream
from .producer import Producer
from .recorder import MeetingRecorder
from .router import Router
from .sdp import OfferError
from .timing import FORWARD_DELAY, LATENCY_BOUNDS_S
from .transport import MediaSettings

logger = logging.getLogger("media.worker")

_len = struct.Struct("!I")
MAX_FRAME = 64 << 20
STATS_INTERVAL = 1.0
LAG_TICK_S = 0.02


async def read_frame(reader: asyncio.StreamReader) -> Optional[dict]:
    try:
        head = await reader.readexactly(4)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    (n,) = _len.unpack(head)
    if n > MAX_FRAME:
        raise ValueError(f"control frame of {n} bytes")
    try:
        body = await reader.readexactly(n)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    return pickle.loads(body)


def write_frame(writer: asyncio.StreamWriter, msg: dict) -> None:
    body = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
    writer.write(_len.pack(len(body)) + body)


def producer_meta(producer: Producer, pipe: PipeEndpoint, worker: int) -> dict:
    """What another worker needs to build the remote twin of a local producer."""
    return {
        "participant_id": producer.participant_id,
        "worker": worker,
        "kind": producer.kind,
        "mid": producer.mid,
        "mime": producer.mime,
        "clock_rate": producer.clock_rate,
        "payload_type": producer.payload_type,
        "rids": [s.rid for s in producer.streams if s.rid is not None],
        "sids": [pipe.export(s) for s in producer.streams],
        "ext_kinds": list(producer.transport.ext_kinds),
        "muted": producer.muted,
    }


class Worker:
    def __init__(self, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.index = index
        self.reader = reader
        self.writer = writer
        self.settings = MediaSettings()
        self.pipe = PipeEndpoint(index)
        self.routers: dict[str, Router] = {}
        self._negotiations: dict[tuple[str, str], asyncio.Task] = {}
        self._stats_task: Optional[asyncio.Task] = None
        self.pipe.routers = lambda: list(self.routers.values())
        self.recorders: dict[str, MeetingRecorder] = {}  # meeting id -> recording running here
        # this worker's share of the hub's uplink (media.pool.PoolEgress sets it)
        self.egress = EgressBudget(0.0, lambda: [t for r in self.routers.values() for t in r.transports.values()])

    def send(self, msg: dict) -> None:
        if not self.writer.is_closing():
            write_frame(self.writer, msg)

    # ---------------------------------------------------------------- routers

    def router(self, meeting_id: str) -> Router:
        r = self.routers.get(meeting_id)
        if r is None:
            r = Router(meeting_id, self.settings)
            r.on_slots = lambda t, slots, m=meeting_id: self.send({"ev": "slots", "meeting": m, "pid": t.participant_id, "slots": slots})
            r.on_publish_layers = lambda t, kind, active, m=meeting_id: self.send(
                {"ev": "publish_layers", "meeting": m, "pid": t.participant_id, "kind": kind, "active": active}
            )
            r.on_levels = lambda levels, m=meeting_id: self.send({"ev": "levels", "meeting": m, "levels": levels})
            r.on_assigned = self.pipe.refresh_wants
            self.routers[meeting_id] = r
        return r

    # ---------------------------------------------------------------- control

    async def run(self) -> None:
        port = await self.pipe.start()
        self.send({"ev": "hello", "index": self.index, "pipe_port": port, "os_pid": os.getpid()})
        self._stats_task = asyncio.ensure_future(self._stats_loop())
        self.loop_lag = [0] * (len(LATENCY_BOUNDS_S) + 1)
        self.gc_pause = [0] * (len(LATENCY_BOUNDS_S) + 1)
        gc.callbacks.append(self._gc_timer)
        POLICY.enable()  # full collector passes only when sites leave (media/gcpolicy.py)
        self._lag_task = asyncio.ensure_future(self._lag_loop())
        self.egress.start()
        while True:
            msg = await read_frame(self.reader)
            if msg is None:
                break  # the control process is gone: so are we
            try:
                self.handle(msg)
            except Exception as exc:
                logger.exception("worker %d: %s failed", self.index, msg.get("op"))
                if msg.get("id") is not None:
                    self.send({"ev": "reply", "id": msg["id"], "error": f"{type(exc).__name__}: {exc}"})
        for r in list(self.routers.values()):
            for pid in list(r.transports):
                await r.remove_transport(pid)
        self.pipe.close()

    def handle(self, msg: dict) -> None:
        op = msg["op"]
        if op == "settings":
            self.settings = msg["settings"]
            _configure_logging(msg.get("log_level", "INFO"), msg.get("log_json", False), self.index)
        elif op == "peers":
            self.pipe.set_peers(msg["peers"])
        elif op == "participant":
            self.router(msg["meeting"]).add_participant(msg["pid"], msg["site_id"], msg["name"], msg["role"], msg["priority"])
        elif op == "negotiate":
            key = (msg["meeting"], msg["pid"])
            task = asyncio.ensure_future(self._negotiate(msg))
            self._negotiations[key] = task
            task.add_done_callback(lambda _t, k=key: self._negotiations.pop(k, None))
        elif op == "remove":
            key = (msg["meeting"], msg["pid"])
            pending = self._negotiations.pop(key, None)
            if pending is not None:
                pending.cancel()
            asyncio.ensure_future(self._remove(msg["meeting"], msg["pid"]))
        elif op == "remote":
            self._add_remote(msg["meeting"], msg["pid"], msg["items"])
        elif op == "floor":
            self.router(msg["meeting"]).set_floor(msg["pid"])
        elif op == "pinned":
            r = self.router(msg["meeting"])
            if hasattr(r, "set_pinned"):
                r.set_pinned(msg["pids"])
        elif op == "mute":
            self.router(msg["meeting"]).set_muted(msg["pid"], msg["kind"], msg["muted"])
        elif op == "speakers":
            self.router(msg["meeting"]).apply_speakers(msg["dominant"], msg["loudness"], msg["order"], msg.get("audible"))
        elif op == "close_meeting":
            if msg["meeting"] in self.recorders:
                return  # the recording goes on; the sites will be back (as in-process)
            r = self.routers.pop(msg["meeting"], None)
            if r is not None:
                asyncio.ensure_future(self._close_router(r))
        elif op == "budget":
            self.egress.set_capacity(msg["bps"])
        elif op == "record_start":
            asyncio.ensure_future(self._record_start(msg))
        elif op == "record_stop":
            asyncio.ensure_future(self._record_stop(msg))
        elif op == "record_stats":
            rec = self.recorders.get(msg["meeting"])
            self.send({"ev": "reply", "id": msg["id"], "stats": rec.stats() if rec is not None else None})
        elif op == "exit":
            os._exit(int(msg.get("code", 0)))
        else:
            raise ValueError(f"unknown op {op!r}")

    async def _negotiate(self, msg: dict) -> None:
        r = self.router(msg["meeting"])
        pid = msg["pid"]
        reply: dict[str, Any] = {"ev": "reply", "id": msg["id"]}
        t = r.create_transport(pid, msg["site_id"], msg["name"], msg["role"], msg["priority"])
        t.on_state = lambda state, m=msg["meeting"]: self.send({"ev": "state", "meeting": m, "pid": pid, "state": state})
        try:
            answer = await t.negotiate(msg["sdp"])
        except OfferError as exc:
            r.transports.pop(pid, None)
            await t.close()
            reply["offer_error"] = str(exc)
            self.send(reply)
            return
        except asyncio.CancelledError:
            r.transports.pop(pid, None)
            await t.close()
            raise
        for kind, muted in (msg.get("muted") or {}).items():
            if muted:
                r.set_muted(pid, kind, True)
        reply["answer"] = answer
        reply["producers"] = [producer_meta(p, self.pipe, self.index) for p in t.producers.values()]
        t.slots_sent = r.slots_of(t)
        reply["slots"] = t.slots_sent
        self.send(reply)
        r.negotiated(t)
        await t.connected.wait()  # signaling paces joins until ICE + DTLS are through
        self.send({"ev": "connected", "meeting": msg["meeting"], "pid": pid})

    async def _remove(self, meeting_id: str, pid: str) -> None:
        r = self.routers.get(meeting_id)
        if r is None:
            return
        t = r.transports.get(pid)
        if t is not None:
            for p in t.producers.values():
                for s in p.streams:
                    self.pipe.unexport(s)
            await r.remove_transport(pid)
        origin = r.remove_remote(pid)
        if origin is not None:
            for p in origin.producers.values():
                for s in p.streams:
                    if isinstance(s, PipeRecvStream):
                        self.pipe.drop_import(s.sid)

    def _add_remote(self, meeting_id: str, pid: str, items: list[dict]) -> None:
        r = self.router(meeting_id)
        if pid in r.transports:
            return  # our own site
        old = r.remote.get(pid)
        if old is not None:
            for p in old.producers.values():
                for s in p.streams:
                    if isinstance(s, PipeRecvStream):
                        self.pipe.drop_import(s.sid)
        origin = None
        for meta in items:
            if origin is None:
                origin = PipeOrigin(pid, meta["worker"], meta["ext_kinds"])
            producer = Producer(
                origin, meta["kind"], meta["mid"], meta["mime"], meta["clock_rate"], meta["payload_type"],
                None, set(), meta["rids"],  # no NACK/RTX on the pipe; keyframes asked through it
            )
            streams = []
            for i, sid in enumerate(meta["sids"]):
                s = PipeRecvStream(producer, i, meta["rids"][i] if meta["rids"] else None)
                self.pipe.import_stream(s, sid)
                streams.append(s)
            producer.streams = streams
            producer.muted = bool(meta.get("muted"))
            origin.producers[meta["kind"]] = producer
        if origin is not None:
            r.add_remote(origin)

    async def _record_start(self, msg: dict) -> None:
        meeting = msg["meeting"]
        self.router(meeting)  # the recording may start before any site is on this worker
        try:
            rec = MeetingRecorder(lambda: self.routers.get(meeting), msg["path"], metadata=msg.get("metadata"))
            await rec.start()
        except Exception as exc:
            logger.exception("worker %d: recording of %s did not start", self.index, meeting)
            self.send({"ev": "reply", "id": msg["id"], "error": f"{type(exc).__name__}: {exc}"})
            return
        self.recorders[meeting] = rec
        self.send({"ev": "reply", "id": msg["id"], "ok": True})

    async def _record_stop(self, msg: dict) -> None:
        rec = self.recorders.pop(msg["meeting"], None)
        result = await rec.stop() if rec is not None else None
        self.send({"ev": "reply", "id": msg["id"], "result": result})

    async def _close_router(self, r: Router) -> None:
        for pid in list(r.transports):
            await self._remove(r.meeting_id, pid)
        for pid in list(r.remote):
            await self._remove(r.meeting_id, pid)

    # ---------------------------------------------------------------- statistics

    _gc_started = 0.0

    def _gc_timer(self, phase: str, info: dict) -> None:
        """Times the garbage collector's passes: the forwarding path stops while one runs, and
        a full pass over a worker holding 80 sites' objects is what a loop-lag histogram of
        20 ms ticks can hide in its last percent (one 200 ms stall every few seconds)."""
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif self._gc_started:
            self.gc_pause[bisect_left(LATENCY_BOUNDS_S, time.perf_counter() - self._gc_started)] += 1
            self._gc_started = 0.0

    async def _lag_loop(self) -> None:
        """How late this worker's event loop runs a 20 ms timer: a datagram waits in the
        socket buffer at least that long before the forwarding path sees it. (What the SFU
        adds to a packet is measured directly, hoinghi_forward_delay_seconds; this says why.)"""
        loop = asyncio.get_running_loop()
        lag = self.loop_lag
        while True:
            t = loop.time()
            await asyncio.sleep(LAG_TICK_S)
            lag[bisect_left(LATENCY_BOUNDS_S, max(0.0, loop.time() - t - LAG_TICK_S))] += 1

    async def _stats_loop(self) -> None:
        while True:
            await asyncio.sleep(STATS_INTERVAL)
            try:
                self.send(self.stats())
            except Exception:
                logger.exception("worker %d: statistics", self.index)

    def stats(self) -> dict:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        meetings = {}
        for mid, r in self.routers.items():
            meetings[mid] = {
                "participants": {pid: t.stats() for pid, t in r.transports.items() if t.negotiated},
                "totals": r.totals(),
            }
        try:
            with open("/proc/self/statm") as f:
                rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            rss = 0
        return {
            "ev": "stats",
            "meetings": meetings,
            "cpu_seconds": ru.ru_utime + ru.ru_stime,
            "rss_bytes": rss,
            "pipe_in": self.pipe.packets_in,
            "pipe_out": self.pipe.packets_out,
            "loop_lag": list(self.loop_lag),
            "gc_pause": list(self.gc_pause),
            "forward_delay": list(FORWARD_DELAY),
            "egress": self.egress.snapshot(),
            "time": time.time(),
        }


def _configure_logging(level: str, json_logs: bool, index: int) -> None:
    root = logging.getLogger()
    root.setLevel(level)
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        if json_logs:
            try:
                from server.app import JsonFormatter  # type: ignore[attr-defined]

                handler.setFormatter(JsonFormatter())
            except Exception:
                handler.setFormatter(logging.Formatter(f"%(asctime)s worker{index} %(levelname)s %(name)s: %(message)s"))
        else:
            handler.setFormatter(logging.Formatter(f"%(asctime)s worker{index} %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)


async def _main(fd: int, index: int) -> None:
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_unix_connection(sock=sock, limit=MAX_FRAME)
    await Worker(index, reader, writer).run()


def main(argv: Optional[list[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    fd, index = int(argv[0]), int(argv[1])
    try:
        import uvloop  # one event loop per core's worth of forwarding: the fastest one

        uvloop.install()
    except ImportError:
        pass
    try:
        asyncio.run(_main(fd, index))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
