"""The control process's side of the media workers: spawn, place sites, relay, restart.

`WorkerPool` starts N worker processes (media/worker.py), tells each where the others'
pipes are, and restarts a worker that dies; the sites it served are told to reconnect
(their pages do so by themselves) and land on a live worker. `RouterProxy` is what a
signaling Room holds instead of an in-process Router: the same methods, carried to the
workers as control messages.

What is decided once, here, so all workers agree: where each site lives, the join order
(slot ranking), the floor and pins, and the dominant speaker (every worker reports the
audio levels of its own publishers each 200 ms window; one SpeakerDetector here folds them
and the decision goes back to every worker). Per-packet work never comes here.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import sys
import time
from typing import Any, Callable, Optional

from .sdp import OfferError
from .timing import add_counts
from .speaker import WINDOW_S, SpeakerDetector
from .transport import MediaSettings
from .worker import MAX_FRAME, read_frame, write_frame

logger = logging.getLogger(__name__)

RESTART_DELAY = 0.5  # s before a dead worker is started again
RPC_TIMEOUT = 30.0


def default_workers() -> int:
    """One worker per core the process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


class WorkerHandle:
    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: Optional[asyncio.subprocess.Process] = None
        self.reader: Optional[asyncio.StreamReader] = None
        self.writer: Optional[asyncio.StreamWriter] = None
        self.pipe_port = 0
        self.os_pid = 0
        self.alive = False
        self.ready = asyncio.Event()
        self.pending: dict[int, asyncio.Future] = {}
        self.stats: dict = {}
        self.restarts = 0
        self.sites = 0  # transports placed here

    def send(self, msg: dict) -> None:
        if self.alive and self.writer is not None and not self.writer.is_closing():
            write_frame(self.writer, msg)


class WorkerPool:
    def __init__(self, count: int, settings: MediaSettings, log_level: str = "INFO", log_json: bool = False) -> None:
        self.count = max(1, count)
        self.settings = settings
        self.log_level = log_level
        self.log_json = log_json
        self.workers = [WorkerHandle(i) for i in range(self.count)]
        self.routers: dict[str, RouterProxy] = {}
        self._ids = itertools.count(1)
        self._closing = False
        self._tasks: set[asyncio.Task] = set()
        self._egress: Optional[PoolEgress] = None
        #: called with the participant ids of a dead worker's sites, so signaling can tell
        #: them to reconnect
        self.on_sites_lost: Optional[Callable[[str, list[str]], None]] = None

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        await asyncio.gather(*(self._spawn(w) for w in self.workers))
        await asyncio.wait_for(asyncio.gather(*(w.ready.wait() for w in self.workers)), 30)
        self._send_peers()
        logger.info("media workers up: %s", ", ".join(f"#{w.index} pid {w.os_pid}" for w in self.workers))

    async def stop(self) -> None:
        self._closing = True
        for w in self.workers:
            if w.writer is not None:
                try:
                    w.writer.close()
                except Exception:
                    pass
        for w in self.workers:
            if w.proc is not None and w.proc.returncode is None:
                try:
                    await asyncio.wait_for(w.proc.wait(), 5)
                except asyncio.TimeoutError:
                    w.proc.kill()
                    await w.proc.wait()
        for t in list(self._tasks):
            t.cancel()

    async def _spawn(self, w: WorkerHandle) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        w.ready = asyncio.Event()
        w.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "media.worker", str(child.fileno()), str(w.index), pass_fds=(child.fileno(),), env=env
        )
        child.close()
        w.reader, w.writer = await asyncio.open_unix_connection(sock=parent, limit=MAX_FRAME)
        w.alive = True
        w.send(
            {"op": "settings", "settings": self.settings, "log_level": self.log_level, "log_json": self.log_json}
        )
        task = asyncio.ensure_future(self._read(w))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _send_peers(self) -> None:
        peers = {w.index: ("127.0.0.1", w.pipe_port) for w in self.workers if w.alive and w.pipe_port}
        for w in self.workers:
            w.send({"op": "peers", "peers": peers})

    async def _read(self, w: WorkerHandle) -> None:
        assert w.reader is not None
        while True:
            try:
                msg = await read_frame(w.reader)
            except Exception:
                logger.exception("worker %d: unreadable control frame", w.index)
                msg = None
            if msg is None:
                break
            try:
                self._on_event(w, msg)
            except Exception:
                logger.exception("worker %d: event %s failed", w.index, msg.get("ev"))
        await self._lost(w)

    def _on_event(self, w: WorkerHandle, msg: dict) -> None:
        ev = msg["ev"]
        if ev == "reply":
            fut = w.pending.pop(msg["id"], None)
            if fut is not None and not fut.done():
                fut.set_result(msg)
        elif ev == "hello":
            w.pipe_port = msg["pipe_port"]
            w.os_pid = msg["os_pid"]
            w.ready.set()
        elif ev == "stats":
            w.stats = msg
            if self._egress is not None:
                self._egress.rebalance()
            for mid, data in msg["meetings"].items():
                r = self.routers.get(mid)
                if r is not None:
                    r.on_worker_stats(w.index, data)
        else:
            r = self.routers.get(msg.get("meeting", ""))
            if r is not None:
                r.on_event(w.index, msg)

    async def _lost(self, w: WorkerHandle) -> None:
        """A worker died (or closed its channel): fail its requests, hand its sites back to
        signaling to reconnect, start a new one and teach it the meetings."""
        w.alive = False
        w.ready.clear()
        for fut in w.pending.values():
            if not fut.done():
                fut.set_exception(OfferError("the media worker restarted; the site reconnects"))
        w.pending.clear()
        if self._closing:
            return
        code = w.proc.returncode if w.proc is not None else None
        if w.proc is not None and code is None:
            try:
                w.proc.kill()
            except ProcessLookupError:
                pass
            code = await w.proc.wait()
        logger.error("media worker #%d (pid %s) stopped (exit %s); restarting it", w.index, w.os_pid, code)
        w.stats = {}
        w.sites = 0
        for r in list(self.routers.values()):
            r.on_worker_lost(w.index)
        await asyncio.sleep(RESTART_DELAY)
        if self._closing:
            return
        w.restarts += 1
        await self._spawn(w)
        try:
            await asyncio.wait_for(w.ready.wait(), 30)
        except asyncio.TimeoutError:
            logger.error("media worker #%d did not come back", w.index)
            return
        self._send_peers()
        for r in list(self.routers.values()):
            r.replay(w)
        if self._egress is not None:
            self._egress._shares.pop(w.index, None)
            self._egress.rebalance()

    # ---------------------------------------------------------------- requests

    async def request(self, worker: int, msg: dict, timeout: float = RPC_TIMEOUT) -> dict:
        w = self.workers[worker]
        if not w.alive:
            raise OfferError("the media worker is restarting; try again in a moment")
        rid = next(self._ids)
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        w.pending[rid] = fut
        w.send({**msg, "id": rid})
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            w.pending.pop(rid, None)

    def broadcast(self, msg: dict, exclude: Optional[int] = None) -> None:
        for w in self.workers:
            if w.index != exclude:
                w.send(msg)

    def place(self) -> int:
        """The live worker with the fewest sites (ties: lowest index)."""
        live = [w for w in self.workers if w.alive] or self.workers
        return min(live, key=lambda w: (w.sites, w.index)).index

    def router(self, meeting_id: str) -> "RouterProxy":
        r = self.routers.get(meeting_id)
        if r is None:
            r = RouterProxy(self, meeting_id)
            self.routers[meeting_id] = r
        return r

    def drop_router(self, meeting_id: str) -> None:
        r = self.routers.pop(meeting_id, None)
        if r is not None:
            r.stop()
            self.broadcast({"op": "close_meeting", "meeting": meeting_id})

    def recorder(self, meeting_id: str, path: Any, metadata: Optional[dict] = None) -> RemoteRecorder:
        """Recordings run in the worker serving the fewest sites at the time they start."""
        return RemoteRecorder(self, meeting_id, str(path), metadata, worker=self.place())

    def egress(self, capacity_bps: float) -> PoolEgress:
        self._egress = PoolEgress(self, capacity_bps)
        return self._egress

    def worker_stats(self) -> list[dict]:
        return [
            {
                "index": w.index,
                "alive": w.alive,
                "os_pid": w.os_pid,
                "sites": w.sites,
                "restarts": w.restarts,
                "cpu_seconds": w.stats.get("cpu_seconds", 0.0),
                "rss_bytes": w.stats.get("rss_bytes", 0),
                "pipe_in": w.stats.get("pipe_in", 0),
                "pipe_out": w.stats.get("pipe_out", 0),
                "loop_lag": w.stats.get("loop_lag", []),
                "gc_pause": w.stats.get("gc_pause", []),
                "forward_delay": w.stats.get("forward_delay", []),
            }
            for w in self.workers
        ]


class PoolEgress:
    """The hub's uplink budget over all workers: each worker's EgressBudget plans its own
    receivers with a share of the capacity, re-split every stats round by what each
    worker's receivers could take (so a worker serving the busy receivers gets more)."""

    def __init__(self, pool: "WorkerPool", capacity_bps: float) -> None:
        self.pool = pool
        self.capacity_bps = float(capacity_bps)
        self._shares: dict[int, float] = {}

    def start(self) -> None:
        self.rebalance()

    def stop(self) -> None:
        pass

    def set_capacity(self, capacity_bps: float) -> None:
        self.capacity_bps = max(0.0, float(capacity_bps))
        self._shares.clear()
        self.rebalance()

    def rebalance(self) -> None:
        live = [w for w in self.pool.workers if w.alive]
        if not live:
            return
        if self.capacity_bps <= 0:
            shares = {w.index: 0.0 for w in live}
        else:
            demand = {w.index: float((w.stats.get("egress") or {}).get("demand_bps", 0)) for w in live}
            total = sum(demand.values())
            floor = self.capacity_bps * 0.05 / len(live)  # a worker with no demand yet still gets a little
            rest = self.capacity_bps - floor * len(live)
            shares = {
                i: floor + (rest * d / total if total > 0 else rest / len(live)) for i, d in demand.items()
            }
        for i, share in shares.items():
            old = self._shares.get(i)
            if old is None or abs(share - old) > 0.05 * max(old, 1.0):
                self._shares[i] = share
                self.pool.workers[i].send({"op": "budget", "bps": share})

    def snapshot(self) -> dict:
        out = {
            "capacity_bps": round(self.capacity_bps),
            "sent_bps": 0,
            "demand_bps": 0,
            "planned_bps": 0,
            "limiting": False,
            "limited_receivers": 0,
            "paused_slots": 0,
        }
        for w in self.pool.workers:
            snap = w.stats.get("egress") if w.alive else None
            if not snap:
                continue
            for k in ("sent_bps", "demand_bps", "planned_bps", "limited_receivers", "paused_slots"):
                out[k] += snap.get(k, 0)
            out["limiting"] = out["limiting"] or bool(snap.get("limiting"))
        return out


class RemoteRecorder:
    """MeetingRecorder's interface for server/recordings.py, run in a media worker: the
    recording worker gets the floor's streams through the pipes like any subscriber."""

    def __init__(self, pool: "WorkerPool", meeting_id: str, path: str, metadata: Optional[dict] = None, worker: int = 0) -> None:
        self.pool = pool
        self.meeting_id = meeting_id
        self.path = str(path)
        self.metadata = metadata
        self.worker = worker
        self._stats: dict = {"subject": None, "elapsed_s": 0.0, "video_frames": 0, "audio_packets": 0, "dropped": 0}
        self._task: Optional[asyncio.Task] = None
        self.result: Any = None

    @property
    def recording(self) -> bool:
        return self._task is not None and self.result is None

    async def start(self) -> None:
        reply = await self.pool.request(self.worker, {"op": "record_start", "meeting": self.meeting_id, "path": self.path, "metadata": self.metadata})
        if "error" in reply:
            raise RuntimeError(f"the recording could not start: {reply['error']}")
        self._task = asyncio.ensure_future(self._poll())

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                reply = await self.pool.request(self.worker, {"op": "record_stats", "meeting": self.meeting_id}, timeout=5)
                if reply.get("stats"):
                    self._stats = reply["stats"]
            except Exception:
                pass

    async def stop(self) -> Any:
        if self.result is not None:
            return self.result
        if self._task is not None:
            self._task.cancel()
        from .recorder import RecordingResult

        try:
            reply = await self.pool.request(self.worker, {"op": "record_stop", "meeting": self.meeting_id}, timeout=60)
            self.result = reply.get("result")
        except Exception as exc:
            self.result = None
            error = f"the recording worker failed ({exc})"
        else:
            error = None if self.result is not None else "the recording worker had no such recording"
        if self.result is None:
            try:
                size = os.path.getsize(self.path)
            except OSError:
                size = 0
            self.result = RecordingResult(
                path=self.path, started_at=0.0, stopped_at=time.time(), bytes=size, duration_s=0.0, video_frames=0,
                audio_packets=0, dropped=0, width=0, height=0, switches=0, error=error,
            )
        return self.result

    def stats(self) -> dict:
        return dict(self._stats)


class TransportProxy:
    """A site's transport as signaling sees it; the real one lives in a worker."""

    def __init__(self, router: "RouterProxy", participant_id: str, worker: int) -> None:
        self.router = router
        self.participant_id = participant_id
        self.worker = worker
        self.producers: dict[str, dict] = {}
        self.slots_sent: Optional[dict] = None
        self.slots_latest: Optional[dict] = None
        self.answered = False
        self.negotiated = False
        self.closed = False
        self.released = False  # its place on the worker was given back (RouterProxy.forget)
        self.stats_cache: Optional[dict] = None
        self.connected = asyncio.Event()  # ICE + DTLS up in the worker
        self.on_state: Optional[Callable[[str], None]] = None  # the connection state, as WebRtcTransport's

    async def negotiate(self, offer_sdp: str) -> str:
        r = self.router
        info = r.participants[self.participant_id]
        reply = await r.pool.request(
            self.worker,
            {
                "op": "negotiate",
                "meeting": r.meeting_id,
                "pid": self.participant_id,
                "sdp": offer_sdp,
                **info,
            },
        )
        if "offer_error" in reply:
            raise OfferError(reply["offer_error"])
        if "error" in reply:
            raise OfferError(f"the media worker could not take the offer ({reply['error'][:160]})")
        self.producers = {m["kind"]: m for m in reply["producers"]}
        if self.slots_latest is None:  # a `slots` event may already have overtaken the reply
            self.slots_latest = reply["slots"]
        self.negotiated = True
        r.producers_ready(self, reply["producers"])
        return reply["answer"]

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.router.forget(self.participant_id, self)


class RouterProxy:
    """A meeting's forwarding graph spread over the workers (the Room's `router`)."""

    def __init__(self, pool: WorkerPool, meeting_id: str) -> None:
        self.pool = pool
        self.meeting_id = meeting_id
        self.transports: dict[str, TransportProxy] = {}
        self.participants: dict[str, dict] = {}  # pid -> site_id, name, role, priority
        self.producer_meta: dict[str, list[dict]] = {}  # pid -> what its worker exported
        self.floor: Optional[str] = None
        self.pinned: list[str] = []
        self.on_slots: Optional[Callable[[Any, dict], None]] = None
        self.on_speaker: Optional[Callable[[Optional[str]], None]] = None
        self.on_publish_layers: Optional[Callable[[Any, str, list[str]], None]] = None
        self.speakers = SpeakerDetector()
        self.speaker_order: list[str] = []
        self._levels: dict[str, list[int]] = {}
        self._order = 0
        self._totals: dict[int, dict] = {}
        self._speaker_task: Optional[asyncio.Task] = None
        self.created = time.monotonic()

    # ---------------------------------------------------------------- membership

    def create_transport(self, participant_id: str, site_id: str, name: str, role: str) -> TransportProxy:
        worker = self.pool.place()
        self._order += 1
        priority = (0 if role == "hub" else 1_000_000) + self._order
        info = {"site_id": site_id, "name": name, "role": role, "priority": priority}
        self.participants[participant_id] = info
        t = TransportProxy(self, participant_id, worker)
        self.transports[participant_id] = t
        self.pool.workers[worker].sites += 1
        self.pool.broadcast({"op": "participant", "meeting": self.meeting_id, "pid": participant_id, **info}, exclude=worker)
        if self._speaker_task is None:
            self._speaker_task = asyncio.ensure_future(self._speaker_loop())
        return t

    def producers_ready(self, t: TransportProxy, items: list[dict]) -> None:
        if not items:
            return
        self.producer_meta[t.participant_id] = items
        self.pool.broadcast({"op": "remote", "meeting": self.meeting_id, "pid": t.participant_id, "items": items}, exclude=t.worker)

    def forget(self, participant_id: str, transport: Optional[TransportProxy] = None) -> None:
        """Drop a site everywhere (its worker closes the transport, others its twins)."""
        t = self.transports.pop(participant_id, None) or transport
        if t is not None and t.released:
            t = None  # its worker's count was already given back
        elif t is not None:
            t.released = True
        self.participants.pop(participant_id, None)
        self.producer_meta.pop(participant_id, None)
        self._levels.pop(participant_id, None)
        if t is not None:
            w = self.pool.workers[t.worker]
            w.sites = max(0, w.sites - 1)
        self.pool.broadcast({"op": "remove", "meeting": self.meeting_id, "pid": participant_id})

    async def remove_transport(self, participant_id: str) -> None:
        t = self.transports.get(participant_id)
        if t is not None:
            await t.close()
        else:
            self.forget(participant_id)

    def negotiated(self, transport: TransportProxy) -> None:
        """The session has sent the answer and the slots: later slot changes go straight out."""
        transport.answered = True
        if transport.slots_latest is not None and transport.slots_latest != transport.slots_sent:
            transport.slots_sent = transport.slots_latest
            if self.on_slots is not None:
                self.on_slots(transport, transport.slots_latest)

    def slots_of(self, transport: TransportProxy) -> dict:
        return transport.slots_latest or {"video": [], "audio": []}

    # ---------------------------------------------------------------- chair controls

    def set_floor(self, participant_id: Optional[str]) -> None:
        self.floor = participant_id
        self.pool.broadcast({"op": "floor", "meeting": self.meeting_id, "pid": participant_id})

    def set_pinned(self, participant_ids: list[str]) -> None:
        if participant_ids != self.pinned:
            self.pinned = list(participant_ids)
            self.pool.broadcast({"op": "pinned", "meeting": self.meeting_id, "pids": self.pinned})

    def set_muted(self, participant_id: str, kind: str, muted: bool) -> bool:
        t = self.transports.get(participant_id)
        if t is None or kind not in t.producers:
            return False
        t.producers[kind]["muted"] = muted
        self.pool.workers[t.worker].send(
            {"op": "mute", "meeting": self.meeting_id, "pid": participant_id, "kind": kind, "muted": muted}
        )
        return True

    def attach_sink(self, participant_id: str, kind: str, sink: Any) -> None:
        return None  # recording runs with in-process media (workers = 0); see docs/recording.md

    def detach_sink(self, sink: Any) -> None:
        return None

    # ---------------------------------------------------------------- events from workers

    def on_event(self, worker: int, msg: dict) -> None:
        ev = msg["ev"]
        if ev == "slots":
            t = self.transports.get(msg["pid"])
            if t is None:
                return
            t.slots_latest = msg["slots"]
            if t.answered and msg["slots"] != t.slots_sent:
                t.slots_sent = msg["slots"]
                if self.on_slots is not None:
                    self.on_slots(t, msg["slots"])
        elif ev == "state":
            t = self.transports.get(msg["pid"])
            if t is not None and t.on_state is not None:
                t.on_state(msg["state"])
        elif ev == "connected":
            t = self.transports.get(msg["pid"])
            if t is not None:
                t.connected.set()
        elif ev == "publish_layers":
            t = self.transports.get(msg["pid"])
            if t is not None and self.on_publish_layers is not None:
                self.on_publish_layers(t, msg["kind"], msg["active"])
        elif ev == "levels":
            for pid, (total, n) in msg["levels"].items():
                acc = self._levels.setdefault(pid, [0, 0])
                acc[0] += total
                acc[1] += n

    def on_worker_stats(self, worker: int, data: dict) -> None:
        self._totals[worker] = data.get("totals", {})
        for pid, st in data.get("participants", {}).items():
            t = self.transports.get(pid)
            if t is not None and t.worker == worker:
                t.stats_cache = st

    def on_worker_lost(self, worker: int) -> None:
        self._totals.pop(worker, None)
        lost = [pid for pid, t in self.transports.items() if t.worker == worker]
        for pid in lost:
            t = self.transports[pid]
            t.closed = True
            self.forget(pid)
        if lost and self.pool.on_sites_lost is not None:
            self.pool.on_sites_lost(self.meeting_id, lost)

    def replay(self, w: WorkerHandle) -> None:
        """Teach a (re)started worker this meeting: who is in it, who publishes what."""
        for pid, info in self.participants.items():
            w.send({"op": "participant", "meeting": self.meeting_id, "pid": pid, **info})
        for pid, items in self.producer_meta.items():
            w.send({"op": "remote", "meeting": self.meeting_id, "pid": pid, "items": items})
        if self.floor is not None:
            w.send({"op": "floor", "meeting": self.meeting_id, "pid": self.floor})
        if self.pinned:
            w.send({"op": "pinned", "meeting": self.meeting_id, "pids": self.pinned})

    # ---------------------------------------------------------------- dominant speaker

    async def _speaker_loop(self) -> None:
        try:
            while True:
                await asyncio.sleep(WINDOW_S)
                try:
                    self._speaker_tick()
                except Exception:
                    logger.exception("meeting %s: speaker detection", self.meeting_id)
        except asyncio.CancelledError:
            pass

    def _speaker_tick(self) -> None:
        publishers = [_Levels(pid, self._levels.get(pid)) for pid, t in self.transports.items() if "audio" in t.producers]
        self._levels.clear()
        if not publishers:
            return
        changed = self.speakers.update(publishers)  # type: ignore[arg-type]
        if changed:
            pid = self.speakers.dominant
            if pid is not None:
                if pid in self.speaker_order:
                    self.speaker_order.remove(pid)
                self.speaker_order.insert(0, pid)
                del self.speaker_order[64:]
            if self.on_speaker is not None:
                self.on_speaker(pid)
        self.pool.broadcast(
            {
                "op": "speakers",
                "meeting": self.meeting_id,
                "dominant": self.speakers.dominant,
                "loudness": dict(self.speakers.loudness),
                "order": list(self.speaker_order),
                "audible": sorted(self.speakers.audible),
            }
        )

    def stop(self) -> None:
        if self._speaker_task is not None:
            self._speaker_task.cancel()
            self._speaker_task = None

    # ---------------------------------------------------------------- introspection

    def participant_stats(self, participant_id: str) -> Optional[dict]:
        t = self.transports.get(participant_id)
        return t.stats_cache if t is not None else None

    def totals(self) -> dict:
        out: dict[str, Any] = {}
        for tot in self._totals.values():
            for k, v in tot.items():
                if k == "pace_waited":  # histogram counts: add bucket by bucket
                    add_counts(out.setdefault(k, []), v)
                elif isinstance(v, list):
                    out.setdefault(k, []).extend(v)
                else:
                    out[k] = out.get(k, 0) + v
        for k in (
            "streams_in_audio", "streams_in_video", "streams_out_audio", "streams_out_video", "packets_in",
            "packets_out", "bytes_in", "bytes_out", "dropped", "lost", "nacks", "retransmissions", "retransmissions_refused", "pacer_dropped", "switches", "audio_switches", "paused",
        ):
            out.setdefault(k, 0)
        out.setdefault("estimates", [])
        out.setdefault("pace_waited", [])
        out.setdefault("pace_wait_s", 0.0)
        return out

    def stats(self) -> dict:
        tot = self.totals()
        return {
            "meeting_id": self.meeting_id,
            "participants": len(self.transports),
            "packets_in": tot["packets_in"],
            "packets_out": tot["packets_out"],
        }


class _Levels:
    """What SpeakerDetector.update reads from a producer, summed over the workers' reports."""

    __slots__ = ("participant_id", "level_sum", "level_n")

    def __init__(self, participant_id: str, acc: Optional[list[int]]) -> None:
        self.participant_id = participant_id
        self.level_sum = acc[0] if acc else 0
        self.level_n = acc[1] if acc else 0
