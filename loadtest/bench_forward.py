"""Forwarding benchmark: synthetic raw peers against hoinghi (and Janus) on loopback.

    .venv/bin/python -m loadtest.bench_forward --scenario fanout --subscribers 60 --seconds 20
    .venv/bin/python -m loadtest.bench_forward --scenario fanout --subscribers 20,60,120 --target both
    .venv/bin/python -m loadtest.bench_forward --scenario room --sites 8
    .venv/bin/python -m loadtest.bench_forward --scenario saturate --subscribers 120 --rates 200,400,600,800

The SFU runs in its own process (hoinghi: `python -m server.cli serve`, Janus:
shared/janus/start-janus.sh with JANUS_EVENT_LOOPS=1), pinned to core 0 with taskset; this
process is the load generator, pinned to core 1. Every peer is a loadtest.rawpeer peer: real
ICE/DTLS/SRTP through aiortc, synthetic VP8 RTP with a send stamp, no codec on either side.

Over a measurement window it reports: forwarded packets/s (counted at the subscribers),
what the publishers sent, the SFU's CPU-seconds (utime+stime of the whole process from
/proc/PID/stat), CPU per forwarded packet, forwarded packets per CPU-second, loss (from the
subscribers' sequence numbers), and one-way latency p50/p99 (publisher stamp -> subscriber
receive, same clock). A loopback probe (UDP to itself through this process's event loop
every 5 ms) measures the part of that latency that is loopback + generator scheduling, so
"added latency" ~= measured - probe. The generator's own CPU and the rest of the machine's
CPU are reported too: a generator near 100% of its core, or busy neighbours, make a result
suspect and are flagged.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import aiohttp
import numpy as np

from .rawpeer import FEEDBACK_MODES, FeedbackTicker, HoinghiSite, Pacer, RawPeer, window_loss

logger = logging.getLogger("bench")

ROOT = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")
GEN_SATURATED = 0.90  # generator CPU share of its core above which results are suspect
NEIGHBOUR_BUSY = 0.10  # other processes' CPU (in cores) above which results are suspect


# --------------------------------------------------------------------------- /proc


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants: hoinghi's media workers are child processes, and an
    SFU's cost is the cost of all of them."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                text = f.read()
        except OSError:
            continue
        ppid = int(text[text.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _one_cpu(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return 0.0
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_cpu(pid: int) -> float:
    """utime + stime of a process and its descendants (all threads), seconds. (A child that
    exits between two readings takes its CPU with it: workers live for the whole run.)"""
    return sum(_one_cpu(p) for p in process_tree(pid))


def proc_rss_mb(pid: int) -> float:
    total = 0.0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) / 1024
        except OSError:
            pass
    return total


def udp_drops(pid: int) -> int:
    """Datagrams dropped (receive buffer full) on the UDP sockets a process (and its
    children) holds."""
    inodes = set()
    for p in process_tree(pid):
        try:
            for fd in os.listdir(f"/proc/{p}/fd"):
                try:
                    link = os.readlink(f"/proc/{p}/fd/{fd}")
                except OSError:
                    continue
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
        except OSError:
            continue
    drops = 0
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if len(parts) > 12 and parts[9] in inodes:
                        drops += int(parts[-1])
        except OSError:
            pass
    return drops


def machine_busy() -> float:
    """CPU-seconds spent non-idle by all cores since boot."""
    with open("/proc/stat") as f:
        parts = f.readline().split()[1:]
    vals = [int(x) for x in parts]
    idle = vals[3] + vals[4]  # idle + iowait
    return (sum(vals[:8]) - idle) / CLK_TCK


def self_cpu() -> float:
    t = os.times()
    return t.user + t.system


def machine_info() -> dict:
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


SERVER_PACKAGES = ("server", "media", "signaling")


def code_fingerprint(root: Path) -> dict:
    """What server code a result was measured on: git HEAD, dirty flag, hash of the sources."""
    h = hashlib.sha256()
    for pkg in SERVER_PACKAGES:
        for f in sorted((root / pkg).rglob("*.py")):
            h.update(str(f.relative_to(root)).encode())
            h.update(f.read_bytes())
    info = {"sources_sha256": h.hexdigest()[:16]}
    try:
        info["git_head"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                          text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", *SERVER_PACKAGES], cwd=ROOT, capture_output=True,
                               text=True, timeout=10).stdout
        info["git_dirty"] = bool(dirty.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def snapshot_server(dest: Path) -> Path:
    """Copy the server's packages (and the web client it serves) so a series runs one version."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in SERVER_PACKAGES + ("web-client",):
        if (ROOT / name).exists():
            shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def archive_server(ref: str, dest: Path) -> Path:
    """The server's packages as committed at `ref` (git archive; the repository is untouched)."""
    dest.mkdir(parents=True, exist_ok=True)
    names = [n for n in SERVER_PACKAGES + ("web-client",)
             if subprocess.run(["git", "cat-file", "-e", f"{ref}:{n}"], cwd=ROOT, capture_output=True).returncode == 0]
    archive = subprocess.run(["git", "archive", ref, *names], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- latency probe


class LoopbackProbe(asyncio.DatagramProtocol):
    """A stamped datagram to ourselves every `interval`: loopback + event-loop delay, no SFU."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.samples = array("q")
        self.transport: Optional[asyncio.DatagramTransport] = None
        self._task: Optional[asyncio.Task] = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=("127.0.0.1", 0))
        self._addr = self.transport.get_extra_info("sockname")
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.transport.sendto(time.monotonic_ns().to_bytes(8, "big"), self._addr)  # type: ignore[union-attr]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.samples.append(time.monotonic_ns() - int.from_bytes(data[:8], "big"))

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self.transport is not None:
            self.transport.close()


# --------------------------------------------------------------------------- targets


@dataclass
class Setup:
    """What a scenario built: who publishes, who receives, and how many streams each gets."""

    publishers: list[RawPeer] = field(default_factory=list)
    receivers: list[RawPeer] = field(default_factory=list)
    streams_per_receiver: int = 1  # video streams each receiver should get
    fanout: int = 1  # receivers per published video stream


class HoinghiTarget:
    name = "hoinghi"

    def __init__(self, args: argparse.Namespace, http: aiohttp.ClientSession) -> None:
        self.args = args
        self.http = http
        self.proc: Optional[subprocess.Popen] = None
        self.tmp = Path(tempfile.mkdtemp(prefix="hoinghi-bench-"))
        self.port = args.port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.tokens = None
        self.code_root = Path(args.code_root) if getattr(args, "code_root", None) else ROOT

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self, video_slots: int, participants: int) -> None:
        from server.auth import TokenService

        (self.tmp / "hoinghi.toml").write_text(
            f"video_slots = {max(9, video_slots)}\n"
            f"max_participants = {max(200, participants + 10)}\n"
            f"workers = {self.args.server_workers}\n"
            f'log_level = "{self.args.server_log_level}"\n'
        )
        self.tokens = TokenService(self.tmp / "secret.key")
        cmd = [sys.executable, "-m", "server.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
               "--data-dir", str(self.tmp), "--announce-ip", "127.0.0.1"]
        if self.args.server_cpus:
            cmd = ["taskset", "-c", self.args.server_cpus] + cmd
        self.log = open(self.tmp / "server.log", "wb")
        env = dict(os.environ, PYTHONPATH=str(self.code_root))
        self.proc = subprocess.Popen(cmd, cwd=self.code_root, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hoinghi exited ({self.proc.returncode}): {self.log_tail()}")
            try:
                async with self.http.get(self.url + "/healthz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        raise RuntimeError(f"hoinghi did not come up: {self.log_tail()}")

    def log_tail(self, n: int = 2000) -> str:
        try:
            return (self.tmp / "server.log").read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def _site(self, name: str, role: str, **kw: Any) -> HoinghiSite:
        assert self.tokens is not None
        token = self.tokens.issue("demo", name, role, 3600)
        return HoinghiSite(self.http, self.url, token, name, payload_size=self.args.payload, feedback=self.args.feedback,
                           decrypt_every=self.args.decrypt_every, **kw)

    async def _connect(self, site: HoinghiSite) -> HoinghiSite:
        await site.join()
        await site.negotiate()
        await site.wait_connected()
        return site

    async def build(self, scenario: str, n: int, audio: bool) -> Setup:
        s = Setup()
        if scenario == "room":
            sites = [self._site(f"site{i:03d}", "hub" if i == 0 else "site", publish_video=True, publish_audio=audio,
                                video_slots=n - 1, audio_slots=(min(n - 1, 3) if audio else 0)) for i in range(n)]
            await _batched([self._connect(x) for x in sites], self.args.join_batch)
            s.publishers = s.receivers = sites  # type: ignore[assignment]
            s.streams_per_receiver = n - 1
            s.fanout = n - 1
        else:
            pub = await self._connect(self._site("pub", "hub", publish_video=True, publish_audio=audio))
            subs = [self._site(f"sub{i:03d}", "site", publish_video=False, publish_audio=False,
                               video_slots=1, audio_slots=1 if audio else 0) for i in range(n)]
            await _batched([self._connect(x) for x in subs], self.args.join_batch)
            s.publishers = [pub]
            s.receivers = subs  # type: ignore[assignment]
            s.fanout = n
        return s

    async def stop(self, setup: Optional[Setup]) -> None:
        if setup is not None:
            peers = {id(p): p for p in setup.publishers + setup.receivers}.values()
            await asyncio.gather(*(p.close() for p in peers), return_exceptions=True)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "log", None):
            self.log.close()
        if not self.args.keep_tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)


class JanusTarget:
    name = "janus"

    def __init__(self, args: argparse.Namespace, http: aiohttp.ClientSession) -> None:
        self.args = args
        self.http = http
        self._pid: Optional[int] = None
        self.session = None

    @property
    def pid(self) -> int:
        assert self._pid is not None
        return self._pid

    async def start(self, video_slots: int, participants: int) -> None:
        from .janus_client import JanusSession, start_janus

        script = Path(self.args.janus_script)
        self._pid = await asyncio.get_running_loop().run_in_executor(
            None, lambda: start_janus(self.args.janus_port, self.args.janus_event_loops, self.args.server_cpus or None, script)
        )
        self.session = JanusSession(self.http, f"http://127.0.0.1:{self.args.janus_port}/janus")
        await self.session.create()

    async def build(self, scenario: str, n: int, audio: bool) -> Setup:
        from .janus_client import JanusPublisher, JanusSubscriber

        sess = self.session
        s = Setup()

        async def connect(peer):
            await peer.join()
            await peer.negotiate()
            await peer.wait_connected()
            return peer

        if scenario == "room":
            pubs = [JanusPublisher(sess, f"site{i:03d}", publish_audio=audio, payload_size=self.args.payload,
                                   feedback=self.args.feedback) for i in range(n)]
            await _batched([connect(p) for p in pubs], self.args.join_batch)
            subs = [JanusSubscriber(sess, f"site{i:03d}-sub", [q.feed_id for q in pubs if q is not p], feedback=self.args.feedback,
                                    decrypt_every=self.args.decrypt_every)
                    for i, p in enumerate(pubs)]
            await _batched([connect(x) for x in subs], self.args.join_batch)
            s.publishers = pubs  # type: ignore[assignment]
            s.receivers = subs  # type: ignore[assignment]
            s.streams_per_receiver = n - 1
            s.fanout = n - 1
        else:
            pub = await connect(JanusPublisher(sess, "pub", publish_audio=audio, payload_size=self.args.payload, feedback=self.args.feedback))
            subs = [JanusSubscriber(sess, f"sub{i:03d}", [pub.feed_id], feedback=self.args.feedback,
                                    decrypt_every=self.args.decrypt_every) for i in range(n)]
            await _batched([connect(x) for x in subs], self.args.join_batch)
            s.publishers = [pub]
            s.receivers = subs  # type: ignore[assignment]
            s.fanout = n
        return s

    async def stop(self, setup: Optional[Setup]) -> None:
        from .janus_client import stop_janus

        if setup is not None:
            peers = {id(p): p for p in setup.publishers + setup.receivers}.values()
            await asyncio.gather(*(p.close() for p in peers), return_exceptions=True)
        if self.session is not None:
            await self.session.destroy()
        if self._pid is not None:
            stop_janus(self._pid, keep_dir=self.args.keep_tmp)


async def _batched(coros: list, batch: int) -> list:
    out = []
    for i in range(0, len(coros), batch):
        out += await asyncio.gather(*coros[i : i + batch])
    return out


# --------------------------------------------------------------------------- measuring


def _video_counts(peer: RawPeer) -> dict[int, int]:
    return {ssrc: st.received for ssrc, st in peer.receiver.streams.items() if st.video}


async def wait_flowing(setup: Setup, steady: float = 3.0, timeout: float = 90.0) -> bool:
    """Wait until every receiver gets all its video streams, continuously for `steady` s.

    An SFU may hold a slot back at first (hoinghi's allocator pauses a slot until its
    downlink estimate covers the stream), so first packets are not enough. Returns False
    (and the run goes on, flagged) if that never happens within `timeout`.
    """
    deadline = time.monotonic() + timeout
    since: Optional[float] = None
    before = [_video_counts(r) for r in setup.receivers]
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        now_counts = [_video_counts(r) for r in setup.receivers]
        ok = all(
            sum(1 for ssrc, n in c.items() if n > b.get(ssrc, 0)) >= setup.streams_per_receiver
            for b, c in zip(before, now_counts)
        )
        before = now_counts
        if not ok:
            since = None
        elif since is None:
            since = time.monotonic()
        elif time.monotonic() - since >= steady:
            return True
    short = sum(1 for r in setup.receivers if len(_video_counts(r)) < setup.streams_per_receiver)
    log(f"  warning: media not steady at every receiver within {timeout:.0f} s ({short} never got all streams)")
    return False


def server_view(setup: Setup) -> dict:
    """hoinghi's own view of the subscribers' links (from link_stats), if it sends one."""
    stats = [r.link_stats for r in setup.receivers if getattr(r, "link_stats", None)]
    if not stats:
        return {}
    slots = [x for st in stats for x in st.get("receiving", []) if x.get("kind") == "video" and x.get("participant_id")]
    est = sorted(st.get("estimated_bps") or 0 for st in stats)
    reasons: dict[str, int] = {}
    for x in slots:
        if x.get("paused"):
            reasons[x.get("reason") or "?"] = reasons.get(x.get("reason") or "?", 0) + 1
    return {
        "video_slots": len(slots),
        "paused_slots": sum(1 for x in slots if x.get("paused")),
        "paused_reasons": reasons,
        "estimate_median_bps": est[len(est) // 2] if est else None,
        "estimate_min_bps": est[0] if est else None,
    }


def _snapshot(target, setup: Setup, pacer: Pacer, probe: LoopbackProbe) -> dict:
    return {
        "t": time.monotonic(),
        "server_cpu": proc_cpu(target.pid),
        "server_drops": udp_drops(target.pid),
        "gen_drops": udp_drops(os.getpid()),
        "gen_cpu": self_cpu(),
        "busy": machine_busy(),
        "sent_video": sum(p.video.packets for p in setup.publishers if p.video),
        "sent_audio": sum(p.audio.packets for p in setup.publishers if p.audio),
        "received": sum(r.receiver.packets for r in setup.receivers),
        "seq": [r.receiver.snapshot() for r in setup.receivers],
        "lat_len": [len(r.receiver.latency) for r in setup.receivers],
        "probe_len": len(probe.samples),
        "resyncs": pacer.resyncs,
        "late_ticks": pacer.late_ticks,
        "nacks": sum(p.video.nacked for p in setup.publishers if p.video),
        "plis": sum(p.video.keyframe_requests for p in setup.publishers if p.video),
        "bad_stamps": sum(r.receiver.bad_stamps for r in setup.receivers),
        "bad_srtp": sum(r.transport.bad_in for r in setup.receivers),
        "rtx_received": sum(r.receiver.rtx_packets for r in setup.receivers),
        "twcc_sent": sum(r.twcc_sent for r in setup.receivers),
        "rtcp_in": sum(r.transport.rtcp_in for r in setup.receivers),
    }


def _pct(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) / 1e6 if len(values) else float("nan")


async def wait_quiet(target, max_wait: float, threshold: float = NEIGHBOUR_BUSY) -> float:
    """Wait (up to max_wait) for a second in which other processes used < threshold cores."""
    deadline = time.monotonic() + max_wait
    other = 0.0
    while True:
        t0, b0, s0, g0 = time.monotonic(), machine_busy(), proc_cpu(target.pid), self_cpu()
        await asyncio.sleep(1.0)
        dt = time.monotonic() - t0
        other = max(0.0, (machine_busy() - b0) - (proc_cpu(target.pid) - s0) - (self_cpu() - g0)) / dt
        if other < threshold or time.monotonic() >= deadline:
            return other


async def measure(target, setup: Setup, pacer: Pacer, probe: LoopbackProbe, seconds: float, rate: float) -> dict:
    a = _snapshot(target, setup, pacer, probe)
    await asyncio.sleep(seconds)
    b = _snapshot(target, setup, pacer, probe)
    dt = b["t"] - a["t"]
    server_cpu = b["server_cpu"] - a["server_cpu"]
    gen_cpu = b["gen_cpu"] - a["gen_cpu"]
    other = max(0.0, (b["busy"] - a["busy"]) - server_cpu - gen_cpu)
    forwarded = b["received"] - a["received"]
    expected = lost = 0
    for before, r in zip(a["seq"], setup.receivers):
        e, got = window_loss(before, r.receiver)
        expected += e
        lost += e - got
    # the window's received counter and the seq snapshot are taken at the same instants
    lats = [np.frombuffer(r.receiver.latency, dtype=np.int64)[i0:i1]
            for r, i0, i1 in zip(setup.receivers, a["lat_len"], b["lat_len"])]
    lat = np.concatenate(lats) if lats else np.zeros(0, dtype=np.int64)
    probe_lat = np.frombuffer(probe.samples, dtype=np.int64)[a["probe_len"] : b["probe_len"]]
    sent_video = b["sent_video"] - a["sent_video"]
    result = {
        "target": target.name,
        "seconds": round(dt, 2),
        "rate_per_publisher": rate,
        "publishers": len(setup.publishers),
        "receivers": len(setup.receivers),
        "fanout": setup.fanout,
        "sent_video": sent_video,
        "sent_audio": b["sent_audio"] - a["sent_audio"],
        "expected_video": sent_video * setup.fanout,
        "forwarded": forwarded,
        "forwarded_per_s": forwarded / dt,
        "delivered_pct": 100.0 * forwarded / (sent_video * setup.fanout) if sent_video else 0.0,
        "server_cpu_s": round(server_cpu, 3),
        "server_cpu_share": server_cpu / dt,
        "cpu_s_per_1000": 1000 * server_cpu / forwarded if forwarded else float("nan"),
        "us_per_packet": 1e6 * server_cpu / forwarded if forwarded else float("nan"),
        "packets_per_cpu_s": forwarded / server_cpu if server_cpu else float("inf"),
        "lost": lost,
        "loss_pct": 100.0 * lost / expected if expected else 0.0,
        "latency_samples": int(len(lat)),
        "lat_p50_ms": _pct(lat, 50),
        "lat_p99_ms": _pct(lat, 99),
        "lat_max_ms": float(lat.max()) / 1e6 if len(lat) else float("nan"),
        "probe_p50_ms": _pct(probe_lat, 50),
        "probe_p99_ms": _pct(probe_lat, 99),
        "gen_cpu_share": gen_cpu / dt,
        "other_cpu_share": other / dt,
        "server_rss_mb": round(proc_rss_mb(target.pid), 1),
        "pacer_resyncs": b["resyncs"] - a["resyncs"],
        "pacer_late_ticks": b["late_ticks"] - a["late_ticks"],
        "nacks_at_publishers": b["nacks"] - a["nacks"],
        "keyframe_requests": b["plis"] - a["plis"],
        "bad_stamps": b["bad_stamps"] - a["bad_stamps"],
        "bad_srtp": b["bad_srtp"] - a["bad_srtp"],
        "rtx_received": b["rtx_received"] - a["rtx_received"],
        "udp_drops_server": b["server_drops"] - a["server_drops"],
        "udp_drops_generator": b["gen_drops"] - a["gen_drops"],
        "twcc_feedback_per_s": (b["twcc_sent"] - a["twcc_sent"]) / dt,
        "rtcp_from_sfu_per_s": (b["rtcp_in"] - a["rtcp_in"]) / dt,
    }
    result["added_p50_ms"] = result["lat_p50_ms"] - result["probe_p50_ms"]
    warnings = []
    if result["gen_cpu_share"] > GEN_SATURATED:
        warnings.append(f"load generator at {100 * result['gen_cpu_share']:.0f}% of its core: figures may be limited by it")
    if result["pacer_resyncs"] or result["pacer_late_ticks"] > 0.05 * dt * pacer.fps:
        warnings.append("publisher pacing fell behind (generator overloaded)")
    if not args_audio_only(result) and result["delivered_pct"] < 98.5:
        warnings.append(f"only {result['delivered_pct']:.1f}% of sent x fanout was delivered (paused or dropped streams)")
    if result["udp_drops_generator"]:
        warnings.append(f"{result['udp_drops_generator']} datagrams dropped at the generator's sockets (it did not keep up)")
    if result["udp_drops_server"]:
        warnings.append(f"{result['udp_drops_server']} datagrams dropped at the SFU's sockets (inbound overload)")
    if result["other_cpu_share"] > NEIGHBOUR_BUSY:
        warnings.append(f"other processes used {result['other_cpu_share']:.2f} cores during the window")
    result["warnings"] = warnings
    return result


def args_audio_only(result: dict) -> bool:
    return result["sent_video"] == 0


# --------------------------------------------------------------------------- running


async def run_one(args: argparse.Namespace, target_name: str, n: int, rates: list[float]) -> list[dict]:
    """Start an SFU, build the scenario, measure a window per rate, tear everything down."""
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        target = HoinghiTarget(args, http) if target_name == "hoinghi" else JanusTarget(args, http)
        scenario = "room" if args.scenario == "room" else "fanout"
        setup: Optional[Setup] = None
        pacer = Pacer(fps=args.fps, rate=rates[0])
        probe = LoopbackProbe()
        ticker: Optional[FeedbackTicker] = None
        results: list[dict] = []
        spy: Optional[subprocess.Popen] = None
        try:
            t0 = time.monotonic()
            await target.start(video_slots=n - 1 if scenario == "room" else 1, participants=n + 1)
            setup = await target.build(scenario, n, args.audio)
            for p in setup.publishers:
                if p.video is not None:
                    pacer.sources.append(p.video)
                if p.audio is not None:
                    pacer.audio_sources.append(p.audio)
            pacer.start()
            ticker = FeedbackTicker(setup.receivers, twcc_interval=args.twcc_interval)
            ticker.start()
            await probe.start()
            steady = await wait_flowing(setup, steady=args.steady, timeout=args.flow_timeout)
            setup_s = time.monotonic() - t0
            log(f"[{target.name}] {scenario} n={n}: {len(setup.receivers)} receivers "
                f"{'steady' if steady else 'NOT steady'} after {setup_s:.1f} s")
            for i, rate in enumerate(rates):
                pacer.rate = rate
                await asyncio.sleep(args.warmup if i == 0 else args.settle)
                if args.py_spy and target_name == "hoinghi" and i == len(rates) - 1:
                    spy = start_py_spy(args, target.pid, args.seconds)
                best: Optional[dict] = None
                for attempt in range(args.busy_retries + 1):
                    if args.quiet_wait:
                        await wait_quiet(target, args.quiet_wait)
                    r = await measure(target, setup, pacer, probe, args.seconds, rate)
                    r["attempts"] = attempt + 1
                    if best is None or r["other_cpu_share"] < best["other_cpu_share"]:
                        best = r
                    if r["other_cpu_share"] <= NEIGHBOUR_BUSY or attempt == args.busy_retries or spy is not None:
                        break
                    log(f"  (other processes used {r['other_cpu_share']:.2f} cores: measuring again)")
                r = best
                r.update(server_view(setup))
                if r.get("paused_slots"):
                    r["warnings"].append(f"server reports {r['paused_slots']} of {r['video_slots']} video slots paused "
                                         f"{r['paused_reasons']} (median downlink estimate {r['estimate_median_bps']} bit/s)")
                r.update(scenario=args.scenario, n=n, setup_s=round(setup_s, 1), feedback=args.feedback, code=args.code, steady=steady,
                         decrypt_every=args.decrypt_every, payload=args.payload, fps=args.fps)
                if spy is not None:
                    spy.wait()
                    spy = None
                results.append(r)
                print_rows([r], header=(i == 0 and args.verbose_rows))
                for w in r["warnings"]:
                    log(f"  warning: {w}")
                if args.scenario == "saturate" and r["loss_pct"] > args.loss_threshold:
                    log(f"  loss {r['loss_pct']:.3f}% > {args.loss_threshold}%: saturation reached")
                    break
        finally:
            probe.stop()
            await pacer.stop()
            if ticker is not None:
                await ticker.stop()
            await target.stop(setup)
            if spy is not None and spy.poll() is None:
                spy.terminate()
        return results


def start_py_spy(args: argparse.Namespace, pid: int, seconds: float) -> subprocess.Popen:
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    cmd = [exe, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "250",
           "--nonblocking", "--format", "raw", "--output", args.py_spy]
    if args.gen_cpus:
        cmd = ["taskset", "-c", args.gen_cpus] + cmd
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


COLUMNS = [  # key, format, header (the format's width is the header's)
    ("target", "{:<8}", "target"),
    ("n", "{:>4}", "N"),
    ("rate_per_publisher", "{:>6.0f}", "pub/s"),
    ("forwarded_per_s", "{:>9.0f}", "fwd pkt/s"),
    ("server_cpu_share", "{:>6.1%}", "CPU"),
    ("cpu_s_per_1000", "{:>8.4f}", "CPUs/1k"),
    ("us_per_packet", "{:>6.2f}", "us/pkt"),
    ("packets_per_cpu_s", "{:>9.0f}", "pkt/CPUs"),
    ("loss_pct", "{:>7.3f}", "loss%"),
    ("delivered_pct", "{:>6.1f}", "dlvr%"),
    ("lat_p50_ms", "{:>6.2f}", "p50ms"),
    ("lat_p99_ms", "{:>6.2f}", "p99ms"),
    ("probe_p50_ms", "{:>6.2f}", "prb50"),
    ("probe_p99_ms", "{:>6.2f}", "prb99"),
    ("gen_cpu_share", "{:>5.0%}", "gen"),
    ("other_cpu_share", "{:>5.2f}", "other"),
]


def _width(fmt: str) -> int:
    spec = fmt[fmt.index(":") + 1 : -1].lstrip("<>^")
    digits = ""
    for ch in spec:
        if not ch.isdigit():
            break
        digits += ch
    return int(digits or 8)


def print_rows(rows: list[dict], header: bool = True) -> None:
    if header:
        print(" ".join(h.ljust(_width(fmt)) if fmt.startswith("{:<") else h.rjust(_width(fmt)) for _, fmt, h in COLUMNS))
    for r in rows:
        print(" ".join(fmt.format(r.get(k, float("nan"))) for k, fmt, _ in COLUMNS), flush=True)


def print_comparison(results: list[dict]) -> None:
    keyed: dict[tuple, dict[str, dict]] = {}
    for r in results:
        keyed.setdefault((r["scenario"], r["n"], r["rate_per_publisher"]), {})[r["target"]] = r
    rows = [(k, v) for k, v in keyed.items() if "hoinghi" in v and "janus" in v]
    if not rows:
        return
    print("\nscenario   N  pub/s | hoinghi us/pkt  janus us/pkt | ratio hoinghi/janus | loss% h / j")
    for (scenario, n, rate), v in rows:
        h, j = v["hoinghi"], v["janus"]
        print(f"{scenario:<8} {n:>4} {rate:>6.0f} | {h['us_per_packet']:>14.2f} {j['us_per_packet']:>13.2f} | "
              f"{h['us_per_packet'] / j['us_per_packet']:>19.2f} | {h['loss_pct']:.3f} / {j['loss_pct']:.3f}")


MD_COLUMNS = [
    ("target", "SFU", "{}"),
    ("n", "N", "{}"),
    ("rate_per_publisher", "pub pkt/s", "{:.0f}"),
    ("forwarded_per_s", "forwarded pkt/s", "{:,.0f}"),
    ("server_cpu_share", "SFU CPU", "{:.1%}"),
    ("cpu_s_per_1000", "CPU-s / 1k pkt", "{:.4f}"),
    ("us_per_packet", "us / pkt", "{:.2f}"),
    ("packets_per_cpu_s", "pkt / CPU-s", "{:,.0f}"),
    ("loss_pct", "loss %", "{:.3f}"),
    ("delivered_pct", "delivered %", "{:.1f}"),
    ("lat_p50_ms", "p50 ms", "{:.2f}"),
    ("lat_p99_ms", "p99 ms", "{:.2f}"),
    ("probe_p50_ms", "probe p50/p99 ms", None),
    ("gen_cpu_share", "generator CPU", "{:.0%}"),
    ("other_cpu_share", "others (cores)", "{:.2f}"),
]


def markdown(results: list[dict]) -> str:
    lines = ["| " + " | ".join(h for _, h, _ in MD_COLUMNS) + " |", "|" + "---|" * len(MD_COLUMNS)]
    for r in results:
        cells = []
        for k, _, fmt in MD_COLUMNS:
            if k == "probe_p50_ms":
                cells.append(f"{r['probe_p50_ms']:.2f} / {r['probe_p99_ms']:.2f}")
                continue
            v = r.get(k)
            try:
                cells.append(fmt.format(v) if v is not None and not (isinstance(v, float) and v != v) else "-")
            except (ValueError, TypeError):
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render(paths: list[str]) -> None:
    for path in paths:
        data = json.loads(Path(path).read_text())
        print(f"\n<!-- {path}: {data.get('command', '')} -->")
        print(markdown(data["results"]))


def pin(cpus: str) -> None:
    if cpus:
        os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench_forward", description=__doc__.split("\n\n")[0])
    p.add_argument("--scenario", choices=("fanout", "room", "saturate"), default="fanout",
                   help="fanout: 1 publisher -> N subscribers; room: N sites each receiving all others; "
                        "saturate: fanout, raising --rates until loss appears")
    p.add_argument("--target", choices=("hoinghi", "janus", "both"), default="hoinghi")
    p.add_argument("--subscribers", default="60", help="N for fanout/saturate; a comma list runs each (fresh SFU each)")
    p.add_argument("--sites", default="8", help="N for room; a comma list runs each")
    p.add_argument("--seconds", type=float, default=20.0, help="measurement window per rate")
    p.add_argument("--rate", type=float, default=130.0, help="video packets/s per publisher")
    p.add_argument("--rates", default="", help="comma list of publisher rates, one window each on the same setup")
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--payload", type=int, default=1000, help="RTP payload bytes per video packet")
    p.add_argument("--audio", action="store_true", help="also publish/receive Opus-like audio (50 pkt/s)")
    p.add_argument("--feedback", choices=FEEDBACK_MODES, default="twcc",
                   help="what subscribers send back: twcc (transport-cc every --twcc-interval + RR/s, like Chrome), "
                        "remb (RR + REMB 50 Mbit/s every second), rr (RR only), none")
    p.add_argument("--twcc-interval", type=float, default=0.1)
    p.add_argument("--decrypt-every", type=int, default=1,
                   help="subscribers decrypt 1 packet in K (latency is sampled from those; loss and "
                        "transport-cc use the clear RTP header of every packet): makes the generator cheaper")
    p.add_argument("--quiet-wait", type=float, default=30.0,
                   help="before each window wait up to this long for other processes to go quiet")
    p.add_argument("--busy-retries", type=int, default=2,
                   help="measure a window again when other processes were busy during it")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds after media is steady before the first window")
    p.add_argument("--steady", type=float, default=3.0, help="media must reach every receiver for this long first")
    p.add_argument("--flow-timeout", type=float, default=90.0)
    p.add_argument("--settle", type=float, default=3.0, help="seconds after a rate change before its window")
    p.add_argument("--loss-threshold", type=float, default=0.05, help="saturate: stop above this loss %%")
    p.add_argument("--server-workers", type=int, default=0,
                   help="hoinghi media worker processes (0: media in the one server process, as Janus with one event loop)")
    p.add_argument("--server-cpus", default="0", help="taskset -c for the SFU ('' = no pinning)")
    p.add_argument("--gen-cpus", default="1", help="CPUs for this load generator ('' = no pinning)")
    p.add_argument("--no-pin", action="store_true", help="pin nothing")
    p.add_argument("--port", type=int, default=0, help="hoinghi HTTP port (0: a free one)")
    p.add_argument("--janus-port", type=int, default=8088)
    p.add_argument("--janus-event-loops", type=int, default=1)
    p.add_argument("--janus-script", default=str(ROOT.parent / "shared" / "janus" / "start-janus.sh"))
    p.add_argument("--server-log-level", default="warning")
    p.add_argument("--join-batch", type=int, default=10, help="peers joining concurrently")
    p.add_argument("--json", help="write all results (and machine info) to this file")
    p.add_argument("--py-spy", metavar="FILE",
                   help="hoinghi: record the server with py-spy (raw format) during the last window; "
                        "summarise with python -m loadtest.profile_top FILE")
    p.add_argument("--keep-tmp", action="store_true")
    p.add_argument("--code-ref", help="run hoinghi as committed at this git revision (git archive into a temp dir)")
    p.add_argument("--snapshot", action="store_true",
                   help="run hoinghi from a copy of server/, media/, signaling/ taken at start (others may be editing)")
    p.add_argument("--no-uvloop", action="store_true", help="generator on asyncio's default loop")
    p.add_argument("--render", nargs="+", metavar="JSON", help="print earlier --json results as markdown tables and exit")
    args = p.parse_args(argv)
    args.verbose_rows = False
    if args.no_pin:
        args.server_cpus = args.gen_cpus = ""
    return args


async def main_async(args: argparse.Namespace) -> list[dict]:
    pin(args.gen_cpus)
    ns = [int(x) for x in (args.sites if args.scenario == "room" else args.subscribers).split(",")]
    if args.rates:
        rates = [float(x) for x in args.rates.split(",")]
    elif args.scenario == "saturate":
        rates = [200, 300, 400, 500, 600, 700, 800, 900, 1000]
    else:
        rates = [args.rate]
    targets = ["hoinghi", "janus"] if args.target == "both" else [args.target]
    results: list[dict] = []
    args.code_root = None
    if args.code_ref and "hoinghi" in targets:
        args.code_root = str(archive_server(args.code_ref, Path(tempfile.mkdtemp(prefix="hoinghi-code-"))))
    elif args.snapshot and "hoinghi" in targets:
        args.code_root = str(snapshot_server(Path(tempfile.mkdtemp(prefix="hoinghi-code-"))))
    args.code = code_fingerprint(Path(args.code_root) if args.code_root else ROOT)
    if args.code_ref:
        commit = subprocess.run(["git", "rev-parse", "--short", args.code_ref], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        args.code.update(ref=args.code_ref, commit=commit, git_dirty=False)
        args.code.pop("git_head", None)
    log(f"server code: {args.code}")
    print_rows([], header=True)
    for n in ns:
        for t in targets:
            results += await run_one(args, t, n, rates)
    if args.code_root and not args.keep_tmp:
        shutil.rmtree(args.code_root, ignore_errors=True)
    return results


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if args.render:
        render(args.render)
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.time()
    if args.no_uvloop:
        results = asyncio.run(main_async(args))
    else:
        import uvloop

        results = uvloop.run(main_async(args))
    print_comparison(results)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "machine": machine_info(),
            "command": " ".join([Path(sys.executable).name, "-m", "loadtest.bench_forward"] + (argv if argv is not None else sys.argv[1:])),
            "started": started,
            "results": results,
        }, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
