"""Rehearse a conference before it happens: N synthetic sites with real links against a server.

    hoinghi rehearse --sites 20 --seconds 20                       # starts its own server
    hoinghi rehearse --url http://10.0.0.5:8080 --secret data/secret.key --sites 50
    hoinghi rehearse --url https://hoinghi.example --admin-token "$HUB_TOKEN" --meeting m1

Each site joins through the real signaling (docs/protocol.md) with real ICE/DTLS/SRTP,
publishes media that costs nothing to encode (sitesim.make_media) and receives every slot the
server gives it, behind the link its profile names (bandwidth, delay, loss; sitesim.LinkProfile,
applied in-process on the site's own socket path, so no root and no netem). Sites join at
`--join-rate` per second; once all are in, the meeting runs `--seconds` more.

While it runs it prints a plain line every `--progress` seconds (joined x/N, media flowing,
loss so far, server CPU). At the end it writes `rehearsal.json` (every figure, per site and
per second) and `rehearsal.html` (self-contained, inline SVG plots; Vietnamese, or English
with --lang en) into --out, prints a summary table and names the sites that will struggle
and why. What is measured, per site, from RTP headers only (no decoding): packets, loss
after retransmission, bitrate (all slots and the stage slot), jitter, frames and freezes;
from the server's own `link_stats`: the layer of the stage video, paused thumbnails, its
downlink estimate; for the server: CPU and memory (/proc of its process, or /metrics), the
packets and bytes it sends (/metrics), hence the hub uplink a real deployment needs.

One process hosts all the sites (one Pacer and one FeedbackTicker for all of them; with
`--decrypt-every K` a site decrypts one packet in K and counts the rest from their clear
headers), so it scales to a province's 164 sites on a machine with a core to spare.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlparse

import aiohttp

from media.timing import add_counts

from . import media_sender
from .linkprofile import SiteSpec, plan_sites, read_profiles_csv, read_registry
from .rawpeer import FeedbackTicker, window_loss
from .rehearse_args import add_arguments
from .sitesim import UDP_IP_OVERHEAD, SimSite, StallWatch, choose_talkers, make_media

logger = logging.getLogger("rehearse")

ROOT = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")
RID_NAMES = {"q": "180p", "h": "360p", "f": "720p"}
LOSS_STRUGGLE_PCT = 2.0
FREEZES_PER_MIN_STRUGGLE = 3.0
FROZEN_SHARE_STRUGGLE = 0.02  # 2 % of the time frozen


# --------------------------------------------------------------------------- the server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_tree(pid: int) -> list[int]:
    """pid and its descendants (a server with media worker processes is all of them)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                try:
                    with open(f"/proc/{p}/task/{tid}/children") as f:
                        todo += [int(c) for c in f.read().split()]
                except OSError:
                    pass
        except OSError:
            pass
    return out


def _one_cpu_s(pid: int) -> Optional[float]:
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    # utime + stime, plus what reaped children used (cutime + cstime)
    return (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / CLK_TCK


def _one_rss_mb(pid: int) -> Optional[float]:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def proc_cpu_s(pid: int) -> Optional[float]:
    """CPU-seconds of a process and all its descendants."""
    vals = [v for v in (_one_cpu_s(p) for p in process_tree(pid)) if v is not None]
    return sum(vals) if vals else None


def proc_rss_mb(pid: int) -> Optional[float]:
    vals = [v for v in (_one_rss_mb(p) for p in process_tree(pid)) if v is not None]
    return sum(vals) if vals else None


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {name: value}, labelled series summed over their labels per direction."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        try:
            key, value = line.rsplit(" ", 1)
            v = float(value)
        except ValueError:
            continue
        name = key.split("{", 1)[0]
        if 'le="' in key:  # a histogram bucket: keep each bound (summed over other labels)
            name += ":le=" + key.split('le="', 1)[1].split('"', 1)[0]
        elif "direction=\"out\"" in key:
            name += ":out"
        elif "direction=\"in\"" in key:
            name += ":in"
        out[name] = out.get(name, 0.0) + v
    return out


class Server:
    """Where the rehearsal's server is and how to get join tokens for it."""

    mode = "external"

    def __init__(self, url: str, meeting: str) -> None:
        self.url = url.rstrip("/")
        self.meeting = meeting
        self.pid: Optional[int] = None
        self.tokens: Any = None  # server.auth.TokenService when the secret is known
        self.admin_token: Optional[str] = None

    async def start(self, http: aiohttp.ClientSession, sites: int) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def issue(self, http: aiohttp.ClientSession, specs: list[SiteSpec], ttl: int) -> dict[str, str]:
        if self.tokens is not None:
            return {s.site_id: self.tokens.issue(self.meeting, s.site_id, s.role, ttl, name=s.name) for s in specs}
        if self.admin_token:
            url = f"{self.url}/api/meetings/{self.meeting}/links"
            body = {"site_ids": [s.site_id for s in specs], "ttl_s": ttl}
            async with http.post(url, json=body, headers={"Authorization": f"Bearer {self.admin_token}"}) as r:
                data = await r.json(content_type=None)
                if r.status != 200:
                    raise RuntimeError(f"join links refused ({r.status}): {data}")
            return {x["site_id"]: x["url"].split("#t=", 1)[1] for x in data["links"]}
        raise RuntimeError("no way to get join tokens: give --secret (the server's secret file) or --admin-token")

    @property
    def cpu_note(self) -> str:
        return ""


class SubprocessServer(Server):
    """`python -m server.cli serve` on loopback with a temp data dir (fresh SQLite, own secret)."""

    mode = "subprocess"

    def __init__(self, meeting: str = "demo", keep: bool = False, log_level: str = "warning",
                 workers: Optional[int] = None) -> None:
        self.workers = workers
        self.port = _free_port()
        super().__init__(f"http://127.0.0.1:{self.port}", meeting)
        self.tmp = Path(tempfile.mkdtemp(prefix="hoinghi-rehearse-"))
        self.keep = keep
        self.log_level = log_level
        self.proc: Optional[subprocess.Popen] = None

    async def start(self, http: aiohttp.ClientSession, sites: int) -> None:
        from server.auth import TokenService

        toml = f"max_participants = {max(200, sites + 10)}\nlog_level = \"{self.log_level}\"\n"
        if self.workers is not None:
            toml += f"workers = {self.workers}\n"
        (self.tmp / "hoinghi.toml").write_text(toml)
        self.tokens = TokenService(self.tmp / "secret.key")
        cmd = [sys.executable, "-m", "server.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
               "--data-dir", str(self.tmp), "--announce-ip", "127.0.0.1"]
        self._log = open(self.tmp / "server.log", "wb")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=dict(os.environ, PYTHONPATH=str(ROOT)))
        self.pid = self.proc.pid
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited ({self.proc.returncode}): {self.log_tail()}")
            try:
                async with http.get(self.url + "/healthz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
        raise RuntimeError(f"server did not come up: {self.log_tail()}")

    def log_tail(self, n: int = 1500) -> str:
        try:
            return (self.tmp / "server.log").read_text(errors="replace")[-n:]
        except OSError:
            return ""

    async def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                await asyncio.get_running_loop().run_in_executor(None, self.proc.wait, 10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()
        if not self.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)


class InProcessServer(Server):
    """The server's aiohttp app in this process and event loop (tests; CPU is not separable)."""

    mode = "inprocess"

    def __init__(self, meeting: str = "demo", workers: int = 0) -> None:
        super().__init__("", meeting)
        self.workers = workers
        self.tmp = Path(tempfile.mkdtemp(prefix="hoinghi-rehearse-"))
        self.pid = os.getpid()
        self._runner: Any = None
        self._storage: Any = None

    async def start(self, http: aiohttp.ClientSession, sites: int) -> None:
        from aiohttp import web

        from server.app import build_app
        from server.auth import TokenService
        from server.config import Settings
        from server.storage import Storage

        port = _free_port()
        settings = Settings(data_dir=self.tmp, host="127.0.0.1", port=port, announce_ip="127.0.0.1",
                            max_participants=max(200, sites + 10), workers=self.workers)
        self._storage = Storage(settings.db_path)
        self._storage.ensure_demo()
        self.tokens = TokenService(settings.secret_path)
        app = await build_app(settings, self._storage, self.tokens)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._storage is not None:
            self._storage.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    @property
    def cpu_note(self) -> str:
        return "in-process server: CPU and memory are of the whole process (server + synthetic sites)"


# --------------------------------------------------------------------------- sampling


@dataclass
class SiteSeries:
    rx_kbps: list = field(default_factory=list)
    stage_kbps: list = field(default_factory=list)
    loss_pct: list = field(default_factory=list)
    freezes: list = field(default_factory=list)  # cumulative
    layer: list = field(default_factory=list)  # stage slot's layer (server's link_stats), None = none
    rid: list = field(default_factory=list)
    paused: list = field(default_factory=list)  # paused video slots
    stage_paused: list = field(default_factory=list)  # True/False: the stage slot paused; None: not known yet
    estimate_kbps: list = field(default_factory=list)


class SiteState:
    """A SimSite plus what the sampler keeps between ticks."""

    def __init__(self, site: SimSite) -> None:
        self.site = site
        self.meter: Any = None  # loadtest.measure.MeasuringReceiver on a viewer-measured site
        self.viewer: Optional[dict] = None  # its report, taken before the site closes
        self.series = SiteSeries()
        self.prev_bytes = 0
        self.prev_stage = 0
        self.prev_seq: dict = {}
        self.flowing = False
        self.steady_seq: Optional[dict] = None  # sequence snapshot at the start of the steady window
        self.steady_bytes = 0
        self.steady_stage = 0
        self.steady_freezes = 0
        self.steady_freeze_s = 0.0
        self.steady_t: Optional[float] = None
        self.steady_lat = 0  # latency samples before the steady window
        self.steady_pacer_dropped = 0  # the server's pacer drops for this site before it
        self.layers_seen = 1
        self.filled_max = 0  # most video slots the server filled at once
        self.stage_rids: list = []


def _site_bytes(st: SiteState) -> int:
    return st.site.receiver.bytes


def _stage_bytes(st: SiteState) -> int:
    ssrc = st.site.stage_ssrc()
    tr = st.site.receiver.tracks.get(ssrc) if ssrc is not None else None
    return tr.bytes if tr is not None else 0


def _freezes(st: SiteState) -> tuple[int, float]:
    n = 0
    s = 0.0
    for tr in st.site.receiver.tracks.values():
        if tr.video:
            n += tr.freezes
            s += tr.freeze_s
    return n, s


def _stage_view(st: SiteState) -> tuple[Optional[int], Optional[str], int, int, Optional[float]]:
    """(layer, rid, layers, paused slots, estimate kbit/s) of the stage slot, from link_stats."""
    out = _stage_view_inner(st)
    ls = st.site.peer.link_stats
    if ls and ls.get("media"):
        filled = sum(1 for x in ls.get("receiving") or [] if x.get("kind") == "video")
        st.filled_max = max(st.filled_max, filled)
    return out


def _stage_paused(st: SiteState) -> Optional[bool]:
    ls = st.site.peer.link_stats
    if not ls or not ls.get("media"):
        return None
    stage = next((x for x in ls.get("receiving") or [] if x.get("kind") == "video" and x.get("index") == 0), None)
    return None if stage is None else bool(stage.get("paused"))


def _stage_view_inner(st: SiteState) -> tuple[Optional[int], Optional[str], int, int, Optional[float]]:
    ls = st.site.peer.link_stats
    if not ls or not ls.get("media"):
        return None, None, 0, 0, None
    recv = [x for x in ls.get("receiving") or [] if x.get("kind") == "video"]
    paused = sum(1 for x in recv if x.get("paused"))
    stage = next((x for x in recv if x.get("index") == 0), None)
    est = ls.get("estimated_bps")
    est_k = est / 1000 if est else None
    if stage is None:
        return None, None, 0, paused, est_k
    layer = None if stage.get("paused") else stage.get("layer")
    return layer, stage.get("rid"), int(stage.get("layers") or 1), paused, est_k


class Rehearsal:
    def __init__(self, args: argparse.Namespace, server: Server, specs: list[SiteSpec]) -> None:
        self.args = args
        self.server = server
        self.specs = specs
        talker_ids = getattr(args, "talker_ids", None)  # a generator process gets them from the parent
        self.talker_ids = list(talker_ids) if talker_ids is not None else choose_talkers(specs, args.talkers)
        self.media = make_media(args.media, audio=not args.no_audio, talker_ids=self.talker_ids)
        self.stalls = StallWatch()
        self.control: Any = None  # set in a worker process (loadtest.rehearse_worker)
        self.decrypt_every = args.decrypt_every or (8 if getattr(self.media, "simulcast", False) else 1)
        self.states: list[SiteState] = []
        self.t0 = 0.0
        self.t_steady: Optional[float] = None
        self.t_end: Optional[float] = None
        self.timeline: dict[str, list] = {k: [] for k in ("t", "joined", "flowing", "rx_kbps", "loss_pct", "server_cpu_pct",
                                                            "server_rss_mb", "hub_uplink_kbps", "server_packets_out_s",
                                                            "generator_cpu_pct")}
        self._prev_gen: Optional[float] = None
        self.join_tasks: list[asyncio.Task] = []
        self._prev_cpu: Optional[float] = None
        self._prev_metrics: Optional[dict] = None
        self._prev_t = 0.0
        self.metrics_ok = False
        self.metrics_first: Optional[dict] = None
        self.metrics_last: Optional[dict] = None
        self.consistency: dict = {}

    # ------------------------------------------------------------ running

    async def run(self, http: aiohttp.ClientSession, tokens: Optional[dict] = None,
                  order: Optional[list[int]] = None, t0_wall: Optional[float] = None) -> dict:
        """Join the sites, run the meeting, measure. In a worker process (`self.control` set)
        the parent's commands replace the settle and duration timers, and `tokens`, the sites'
        global join order and the parent's start time come from the parent."""
        a = self.args
        if tokens is None:
            tokens = await self.server.issue(http, self.specs, ttl=int(3600 + a.seconds * 2))
        order = order if order is not None else list(range(len(self.specs)))
        ticker = FeedbackTicker([], twcc_interval=0.1)
        self.media.start()
        self.stalls.start()
        ticker.start()
        self.t0 = time.monotonic() - (time.time() - t0_wall if t0_wall is not None else 0.0)
        sampler = asyncio.ensure_future(self._sample_loop(http))
        # viewers measured by decoding: sites of this process, besides the hub, when the hub's
        # sender (whose frame clock turns a stamp into a capture time) runs in this process too
        measured_ix: set[int] = set()
        if getattr(a, "measure", 0) and self.media.describe().get("media") == "preencoded" and \
                any(sp.role == "hub" for sp in self.specs):
            measured_ix = {i for i, sp in enumerate(self.specs) if sp.role != "hub"}
            measured_ix = set(sorted(measured_ix)[: a.measure])
        try:
            for i, spec in enumerate(self.specs):
                if spec.site_id not in tokens:
                    raise RuntimeError(f"no join token for site {spec.site_id}")
                await asyncio.sleep(max(0.0, self.t0 + order[i] / a.join_rate - time.monotonic()))
                measured = i in measured_ix
                site = SimSite(spec, http, self.server.url, tokens[spec.site_id], self.media,
                               decrypt_every=1 if measured else self.decrypt_every, feedback=a.feedback,
                               seed=a.seed + order[i], queue_ms=a.queue_ms)
                st = SiteState(site)
                if measured:
                    from .measure import MeasuringReceiver

                    st.meter = MeasuringReceiver(site.peer, sample=[0])  # the stage (the floor)
                self.states.append(st)
                ticker.peers.append(site.peer)
                self.join_tasks.append(asyncio.ensure_future(self._join(site)))
            if self.join_tasks:
                await asyncio.wait(self.join_tasks, timeout=a.join_timeout + 5)
            # the meeting runs --seconds once everyone is in (or gave up)
            if self.control is not None:
                self.control.send({"joins_done": True})
                await self.control.wait("steady")
            else:
                await asyncio.sleep(a.settle)
            self.t_steady = time.monotonic()
            await self._mark_steady(http)
            if self.control is not None:
                await self.control.wait("stop")
            else:
                await asyncio.sleep(a.seconds)
            await self._final_snapshot(http)
            self.t_end = time.monotonic()
        finally:
            sampler.cancel()
            try:
                await sampler
            except (asyncio.CancelledError, Exception):
                pass
            await self.media.stop()
            await self.stalls.stop()
            await ticker.stop()
            for t in self.join_tasks:
                t.cancel()
            for st in self.states:
                if st.meter is not None:
                    try:
                        st.viewer = _viewer_summary(st.meter.report())
                    except Exception:
                        logger.exception("viewer measurement of %s", st.site.spec.site_id)
                    st.meter.close()
            await asyncio.gather(*(st.site.close() for st in self.states), return_exceptions=True)
        return self.result()

    async def _join(self, site: SimSite) -> None:
        try:
            await site.connect(timeout=self.args.join_timeout)
        except Exception:
            logger.info("site %s failed: %s", site.spec.site_id, site.error)

    async def _metrics(self, http: aiohttp.ClientSession) -> Optional[dict]:
        if self.control is not None:  # a worker process: the parent reads the server
            return None
        try:
            async with http.get(self.server.url + "/metrics", timeout=aiohttp.ClientTimeout(total=3)) as r:
                if r.status != 200:
                    return None
                m = parse_metrics(await r.text())
                m["_t"] = time.monotonic()
                return m
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            return None

    async def _sample_loop(self, http: aiohttp.ClientSession) -> None:
        interval = self.args.sample
        next_t = time.monotonic()
        next_progress = self.t0 + self.args.progress
        while True:
            next_t += interval
            await asyncio.sleep(max(0.0, next_t - time.monotonic()))
            m = await self._metrics(http)
            self._sample(m)
            if self.control is not None:
                self.control.send(self.status())
            elif time.monotonic() >= next_progress:
                next_progress += self.args.progress
                self._progress()

    def _sample(self, m: Optional[dict]) -> None:
        now = time.monotonic()
        dt = now - self._prev_t if self._prev_t else self.args.sample
        self._prev_t = now
        tl = self.timeline
        tl["t"].append(round(now - self.t0, 2))
        joined = flowing = 0
        total_bytes = 0
        exp_all = got_all = 0
        for st in self.states:
            s = st.series
            site = st.site
            if site.t_connected is not None and not site.closed:
                joined += 1
            b = _site_bytes(st)
            sb = _stage_bytes(st)
            rx = (b - st.prev_bytes) * 8 / dt / 1000
            s.rx_kbps.append(round(rx, 1))
            s.stage_kbps.append(round((sb - st.prev_stage) * 8 / dt / 1000, 1))
            total_bytes += b - st.prev_bytes
            st.prev_bytes, st.prev_stage = b, sb
            exp, got = window_loss(st.prev_seq, site.receiver)
            st.prev_seq = site.receiver.snapshot()
            exp_all += exp
            got_all += got
            s.loss_pct.append(round(100.0 * (exp - got) / exp, 2) if exp > 0 else None)
            s.freezes.append(_freezes(st)[0])
            layer, rid, layers, paused, est = _stage_view(st)
            s.layer.append(layer)
            s.rid.append(rid)
            s.paused.append(paused)
            s.stage_paused.append(_stage_paused(st))
            s.estimate_kbps.append(round(est, 1) if est else None)
            if layers:
                st.layers_seen = max(st.layers_seen, layers)
            if rid and layer is not None:
                st.stage_rids.append(rid)
            if rx > 0:
                st.flowing = True
            flowing += 1 if rx > 0 else 0
        tl["joined"].append(joined)
        tl["flowing"].append(flowing)
        tl["rx_kbps"].append(round(total_bytes * 8 / dt / 1000, 1))
        tl["loss_pct"].append(round(100.0 * (exp_all - got_all) / exp_all, 3) if exp_all > 0 else None)
        gen = sum(os.times()[:2])
        tl["generator_cpu_pct"].append(round(100.0 * (gen - self._prev_gen) / dt, 1) if self._prev_gen is not None else None)
        self._prev_gen = gen
        self._server_sample(m, dt)

    def _server_sample(self, m: Optional[dict], dt: float) -> None:
        """Server CPU, memory and egress for this tick."""
        tl = self.timeline
        pid = self.server.pid
        cpu = proc_cpu_s(pid) if pid else None
        if cpu is None and m is not None:
            cpu = m.get("process_cpu_seconds_total")
        if cpu is not None and self._prev_cpu is not None:
            tl["server_cpu_pct"].append(round(100.0 * (cpu - self._prev_cpu) / dt, 1))
        else:
            tl["server_cpu_pct"].append(None)
        self._prev_cpu = cpu
        rss = proc_rss_mb(pid) if pid else None
        if rss is None and m is not None and "process_resident_memory_bytes" in m:
            rss = m["process_resident_memory_bytes"] / 2**20
        tl["server_rss_mb"].append(round(rss, 1) if rss is not None else None)
        pm = self._prev_metrics
        if m is not None and pm is not None and "hoinghi_bytes_total:out" in m:
            self.metrics_ok = True
            mdt = m["_t"] - pm["_t"]
            dbytes = m["hoinghi_bytes_total:out"] - pm.get("hoinghi_bytes_total:out", 0)
            dpk = m.get("hoinghi_packets_total:out", 0) - pm.get("hoinghi_packets_total:out", 0)
            tl["hub_uplink_kbps"].append(round(max(0.0, (dbytes + UDP_IP_OVERHEAD * dpk) * 8 / mdt / 1000), 1))
            tl["server_packets_out_s"].append(round(max(0.0, dpk / mdt), 1))
        else:
            tl["hub_uplink_kbps"].append(None)
            tl["server_packets_out_s"].append(None)
        if m is not None:
            self._prev_metrics = m

    def arrived(self) -> int:
        """RTP packets that reached these sites, or were dropped by / still wait in their shaped links."""
        n = sum(self._site_packets(st) for st in self.states)
        for st in self.states:
            d = st.site.shaper.down if st.site.shaper else None
            if d is not None:
                n += d.dropped_rtp + d.queued_rtp()
        return n

    def status(self) -> dict:
        """Cumulative counters of these sites, for a parent that aggregates several processes."""
        exp = got = 0
        for st in self.states:
            e, g = window_loss({}, st.site.receiver)
            exp += e
            got += g
        tl = self.timeline
        return {"t_wall": time.time(), "joined": tl["joined"][-1] if tl["joined"] else 0,
                "flowing": tl["flowing"][-1] if tl["flowing"] else 0,
                "bytes": sum(_site_bytes(st) for st in self.states), "expected": exp, "received": got,
                "freezes": sum(_freezes(st)[0] for st in self.states), "failed": sum(1 for st in self.states if st.site.error),
                "cpu_s": sum(os.times()[:2]), "arrived": self.arrived()}

    def _progress(self) -> None:
        tl = self.timeline
        if not tl["t"]:
            return
        n = len(self.specs)
        started = len(self.states)
        loss = self._steady_loss() if self.t_steady else None
        if loss is None:
            exp = got = 0
            for st in self.states:
                e, g = window_loss({}, st.site.receiver)
                exp += e
                got += g
            loss = 100.0 * (exp - got) / exp if exp else 0.0
        cpu = tl["server_cpu_pct"][-1]
        freezes = sum(_freezes(st)[0] for st in self.states)
        failed = sum(1 for st in self.states if st.site.error)
        phase = "steady" if self.t_steady else ("joining" if started < n else "settling")
        line = (f"[{tl['t'][-1]:6.1f}s] {phase}: joined {tl['joined'][-1]}/{n}"
                + (f" ({failed} failed)" if failed else "")
                + f", media flowing {tl['flowing'][-1]}/{n}, received {tl['rx_kbps'][-1] / 1000:.1f} Mbit/s, "
                f"loss so far {loss:.2f}%, freezes {freezes}"
                + (f", server CPU {cpu:.0f}%" if cpu is not None else "")
                + (f", hub uplink {tl['hub_uplink_kbps'][-1] / 1000:.1f} Mbit/s" if tl["hub_uplink_kbps"][-1] is not None else ""))
        print(line, flush=True)

    async def _mark_steady(self, http: aiohttp.ClientSession) -> None:
        self.send_lag0 = list(media_sender.send_lag_hist)
        self.metrics_first = await self._metrics(http)
        self.cpu_first = proc_cpu_s(self.server.pid) if self.server.pid else None
        for st in self.states:
            st.steady_seq = st.site.receiver.snapshot()
            st.steady_bytes = _site_bytes(st)
            st.steady_stage = _stage_bytes(st)
            st.steady_freezes, st.steady_freeze_s = _freezes(st)
            st.steady_t = time.monotonic()
            st.steady_lat = len(getattr(st.site.receiver, "latency_ms", ()))
            st.steady_packets = self._site_packets(st)
            d = st.site.shaper.down if st.site.shaper else None
            st.steady_link_dropped = d.dropped_rtp if d is not None else 0
            st.steady_pacer_dropped = (st.site.peer.link_stats or {}).get("pacer_dropped") or 0

    @staticmethod
    def _site_packets(st: SiteState) -> int:
        r = st.site.receiver
        dups = sum(s.dups for s in r.streams.values()) + sum(s.dups for s in r.rtx.values())
        return r.packets + r.rtx_packets + dups

    def _steady_loss(self) -> Optional[float]:
        exp = got = 0
        for st in self.states:
            if st.steady_seq is None:
                continue
            e, g = window_loss(st.steady_seq, st.site.receiver)
            exp += e
            got += g
        return 100.0 * (exp - got) / exp if exp else None

    async def _final_snapshot(self, http: aiohttp.ClientSession) -> None:
        """Server's sent counters and the sites' received ones at (nearly) the same instant."""
        arrived = self.arrived
        self.cpu_last = proc_cpu_s(self.server.pid) if self.server.pid else None
        before = arrived()
        self.metrics_last = await self._metrics(http)
        after = arrived()
        m = self.metrics_last
        self.consistency = {
            "server_packets_out": int(m.get("hoinghi_packets_total:out", 0)) if m else None,
            "sites_arrived_before_scrape": before,
            "sites_arrived_after_scrape": after,
            "sites_received_packets": sum(self._site_packets(st) for st in self.states),
            "link_dropped_packets": sum(st.site.shaper.down.dropped_rtp
                                        for st in self.states if st.site.shaper and st.site.shaper.down),
            "note": "every packet the server sent was received, dropped by a shaped link or is still in one: "
                    "server_packets_out lies between the two 'arrived' counts, less what is in flight on loopback",
        }
        for st in self.states:
            st.end_t = time.monotonic()

    # ------------------------------------------------------------ results

    def site_result(self, st: SiteState) -> dict:
        site = st.site
        spec = site.spec
        r = site.receiver
        out: dict[str, Any] = {
            "site_id": spec.site_id, "name": spec.name, "role": spec.role, "level": spec.level,
            "profile": spec.profile.as_dict(), "link": spec.profile.describe(),
            "joined": site.t_connected is not None, "error": site.error,
            "join_s": _r(site.join_s, 3), "connect_s": _r(site.connect_s, 3), "first_media_s": _r(site.first_media_s, 3),
            "video_slots": site.peer.video_slots, "audio_slots": site.peer.audio_slots,
        }
        summary: dict[str, Any] = {}
        if st.steady_seq is not None and st.steady_t is not None:
            dt = max(1e-6, getattr(st, "end_t", time.monotonic()) - st.steady_t)
            e, g = window_loss(st.steady_seq, r)
            fz, fs = _freezes(st)
            n0 = int(round((st.steady_t - self.t0) / self.args.sample))
            layers = [x for x in st.series.layer[n0:]]
            known = [x for x in layers if x is not None]
            paused = st.series.paused[n0:]
            summary = {
                "seconds": round(dt, 2),
                "packets": self._site_packets(st) - st.steady_packets,
                "expected": e, "received": g, "lost": e - g,
                "loss_pct": round(100.0 * (e - g) / e, 3) if e else None,
                "rx_kbps": round((_site_bytes(st) - st.steady_bytes) * 8 / dt / 1000, 1),
                "stage_kbps": round((_stage_bytes(st) - st.steady_stage) * 8 / dt / 1000, 1),
                "freezes": fz - st.steady_freezes,
                "freeze_s": round(fs - st.steady_freeze_s, 2),
                # freezes during which this process's own event loop stalled are the generator's
                "freezes_generator": sum(1 for t in r.tracks.values() if t.video for a, g in t.freeze_at
                                         if a >= st.steady_t and self.stalls.covers(a, g)),
                "freeze_s_generator": round(sum(g for t in r.tracks.values() if t.video for a, g in t.freeze_at
                                                if a >= st.steady_t and self.stalls.covers(a, g)), 2),
                "jitter_ms": round(max((t.jitter for t in r.tracks.values() if t.video), default=0.0) * 1000, 2),
                "video_tracks": sum(1 for t in r.tracks.values() if t.video),
                "video_slots_filled": st.filled_max,
                "audio_tracks": sum(1 for t in r.tracks.values() if not t.video),
                "layers_available": st.layers_seen,
                "stage_layer_share": {str(k): round(known.count(k) / len(known), 3) for k in sorted(set(known))} if known else {},
                "stage_layer_min": min(known) if known else None,
                "stage_layer_max": max(known) if known else None,
                "stage_rid_top": _top_rid([r for r, lay in zip(st.series.rid[n0:], layers) if r and lay is not None]),
                "stage_paused_share": _share(st.series.stage_paused[n0:]),
                "paused_slots_mean": round(sum(paused) / len(paused), 2) if paused else 0,
                **_latency_summary(list(getattr(r, "latency_ms", ())[st.steady_lat:])),
                "estimate_kbps_last": next((x for x in reversed(st.series.estimate_kbps) if x), None),
            }
            ls = site.peer.link_stats or {}
            summary["server_loss_in"] = ls.get("loss_in")
            summary["server_loss_out"] = ls.get("loss_out")
            if ls.get("pacer_dropped") is not None:
                summary["server_pacer_dropped"] = max(0, ls["pacer_dropped"] - st.steady_pacer_dropped)
            summary["own_layers_arriving"] = ls.get("video_layers")
            summary["rtt_ms"] = ls.get("rtt_ms")
            summary["publish_layers"] = getattr(site.peer, "publish_layers", None)
            allowed = getattr(self.media, "allowed", {})
            summary["uplink_layers"] = allowed.get(site.peer.name) if allowed else None
            if site.shaper is not None:
                summary["link"] = site.shaper.stats()
                d = site.shaper.down
                if d is not None:
                    # loss on this site's own downlink, against what reached it plus what it dropped
                    dropped = d.dropped_rtp - st.steady_link_dropped
                    summary["link_dropped"] = dropped
                    arrived = summary["packets"] + dropped
                    summary["own_link_loss_pct"] = round(100.0 * dropped / arrived, 3) if arrived else None
        if st.viewer is not None:
            summary["viewer"] = st.viewer
        out["summary"] = summary
        out["series"] = {k: v for k, v in vars(st.series).items()}
        out["struggles"] = struggles(out, self.media_simulcast, self.args.lang)
        return out

    @property
    def media_simulcast(self) -> bool:
        return bool(getattr(self.media, "simulcast", False))

    def result(self, sites: Optional[list] = None, workers: Optional[list] = None) -> dict:
        """Everything measured. `sites` and `workers` (their own results) come from worker processes."""
        if sites is None:
            sites = [self.site_result(st) for st in self.states]
        steady_s = (self.t_end - self.t_steady) if (self.t_end and self.t_steady) else None
        m0, m1 = self.metrics_first, self.metrics_last
        server: dict[str, Any] = {"mode": self.server.mode, "url": self.server.url, "pid": self.server.pid,
                                  "cpu_note": self.server.cpu_note, "metrics": self.metrics_ok}
        if steady_s:
            c0, c1 = getattr(self, "cpu_first", None), getattr(self, "cpu_last", None)
            if c0 is None and m0 and m1:
                c0, c1 = m0.get("process_cpu_seconds_total"), m1.get("process_cpu_seconds_total")
            if c0 is not None and c1 is not None:
                server["cpu_s"] = round(c1 - c0, 3)
                server["cpu_pct_mean"] = round(100.0 * (c1 - c0) / steady_s, 1)
            if m0 and m1:
                dpk = m1.get("hoinghi_packets_total:out", 0) - m0.get("hoinghi_packets_total:out", 0)
                dby = m1.get("hoinghi_bytes_total:out", 0) - m0.get("hoinghi_bytes_total:out", 0)
                server["packets_out"] = int(dpk)
                server["packets_out_per_s"] = round(dpk / steady_s, 1)
                server["hub_uplink_kbps_mean"] = round((dby + UDP_IP_OVERHEAD * dpk) * 8 / steady_s / 1000, 1)
                if server.get("cpu_s") and dpk:
                    server["us_per_forwarded_packet"] = round(1e6 * server["cpu_s"] / dpk, 2)
                server["upstream_lost"] = int(m1.get("hoinghi_upstream_lost_packets_total", 0) - m0.get("hoinghi_upstream_lost_packets_total", 0))
                server["retransmissions"] = int(m1.get("hoinghi_retransmissions_total", 0) - m0.get("hoinghi_retransmissions_total", 0))
                for key in ("layer_switches", "audio_switches", "speaker_changes"):
                    server[key] = int(m1.get(f"hoinghi_{key}_total", 0) - m0.get(f"hoinghi_{key}_total", 0))
                # what the SFU itself adds: kernel receive to last copy out, time in the per-site
                # pacers; and why: its event loops' lag, its garbage collector's pauses
                for key, metric in (("pacer_wait", "hoinghi_pacer_wait_seconds"), ("forward_delay", "hoinghi_forward_delay_seconds"),
                                    ("loop_lag", "hoinghi_worker_loop_lag_seconds"),
                                    ("gc_pause", "hoinghi_worker_gc_pause_seconds")):
                    q = histogram_quantiles(m0, m1, metric, (0.5, 0.99, 1.0))
                    if q is not None:
                        server[f"{key}_ms_p50"], server[f"{key}_ms_p99"], server[f"{key}_ms_max"] = q
                        server[f"{key}_over_50ms"] = histogram_over(m0, m1, metric, 0.05)
            rss = [x for x in self.timeline["server_rss_mb"] if x is not None]
            if rss:
                server["rss_mb_max"] = max(rss)
            up = sorted(x for x in self.timeline["hub_uplink_kbps"] if x is not None)
            if up:
                server["hub_uplink_kbps_peak"] = up[-1]
                server["hub_uplink_kbps_p95"] = up[min(len(up) - 1, int(0.95 * len(up)))]
        if steady_s:
            # counted at the sites (what reached them + what their shaped links dropped): the
            # same count the Janus comparison uses, where there is no /metrics
            fwd = sum(s["summary"].get("packets", 0) + s["summary"].get("link_dropped", 0) for s in sites if s["summary"])
            server["forwarded_at_sites"] = fwd
            server["forwarded_at_sites_per_s"] = round(fwd / steady_s, 1)
            if server.get("cpu_s") is not None and fwd:
                server["us_per_forwarded_packet_sites"] = round(1e6 * server["cpu_s"] / fwd, 2)
        sums = [s["summary"] for s in sites if s["summary"]]
        warnings = []
        stalls = [x for x in self.stalls.stalls if self.t_steady and x[0] >= self.t_steady]
        n_stalls = len(stalls)
        if stalls:
            fz = sum(x["freezes"] for x in sums)
            fg = sum(x.get("freezes_generator", 0) for x in sums)
            warnings.append(f"the synthetic sites' event loop stalled {len(stalls)} times for over "
                            f"{int(self.stalls.threshold * 1000)} ms (max {max(late for _, late in stalls) * 1000:.0f} ms; "
                            f"a busy machine?): {fg} of the {fz} freezes coincide and are not counted against the server")
        send_lag = _send_lag_window(getattr(self, "send_lag0", None))
        for w in workers or []:
            n_stalls += w["totals"].get("generator_stalls", 0)
            send_lag = add_counts(send_lag or [], w["totals"].get("send_lag_hist") or []) or None
            warnings += [f"worker {w['worker']}: {x}" for x in w.get("warnings", [])]
        gen = [x for x in self.timeline["generator_cpu_pct"] if x is not None]
        if workers:
            pass  # per worker, above
        elif gen and self.server.mode != "inprocess" and sorted(gen)[len(gen) // 2] > 90:
            warnings.append(f"the synthetic sites' process used {sorted(gen)[len(gen) // 2]:.0f}% of a core (median): "
                            "figures may be limited by the load generator; use --decrypt-every, fewer sites per process "
                            "or a machine with a core to spare")
        joined = [s for s in sites if s["joined"]]
        exp = sum(x["expected"] for x in sums)
        lost = sum(x["lost"] for x in sums)
        join_times = sorted(s["join_s"] for s in sites if s["join_s"] is not None)
        fm = sorted(s["first_media_s"] for s in sites if s["first_media_s"] is not None)
        totals = {
            "sites": len(self.specs), "joined": len(joined), "failed": sum(1 for s in sites if s["error"]),
            "media_flowing": sum(1 for s in sites if any((x or 0) > 0 for x in s["series"]["rx_kbps"])),
            "steady_seconds": _r(steady_s, 2),
            "loss_pct": round(100.0 * lost / exp, 3) if exp else None,
            "rx_kbps": round(sum(x["rx_kbps"] for x in sums), 1),
            "freezes": sum(x["freezes"] for x in sums),
            "freezes_generator": sum(x.get("freezes_generator", 0) for x in sums),
            "generator_stalls": n_stalls,
            # how late the generators' media pacers sent frames: part of the latency the sites
            # measure that is this machine's, not the server's
            "send_lag_hist": _trim(list(send_lag or [])),
            **_hist_pctl(send_lag, "send_lag_ms"),
            "generator_processes": len(workers) if workers else 1,
            "join_s_p50": _pctl(join_times, 50), "join_s_max": join_times[-1] if join_times else None,
            "first_media_s_p50": _pctl(fm, 50), "first_media_s_max": fm[-1] if fm else None,
            "struggling": sum(1 for s in sites if s["struggles"]),
            **_merged_latency(sums),
            "viewer": _merged_viewer([x["viewer"] for x in sums if x.get("viewer")]),
        }
        return {
            "tool": "hoinghi rehearse",
            "version": 1,
            "lang": self.args.lang,
            "command": getattr(self.args, "command_line", ""),
            "started_unix": round(time.time() - (time.monotonic() - self.t0), 1),
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(self.args).items()
                       if k not in ("admin_token", "command_line", "func")},
            "media": self.media.describe(),
            "server": server,
            "consistency": self.consistency,
            "warnings": warnings,
            "decrypt_every": self.decrypt_every,
            "totals": totals,
            "timeline": self.timeline,
            "sites": sites,
            "struggling": [{"site_id": s["site_id"], "name": s["name"], "reasons": s["struggles"],
                            "text": f"{s['name']}: " + "; ".join(s["struggles"])} for s in sites if s["struggles"]],
        }


async def run_processes(reh: Rehearsal, http: aiohttp.ClientSession, k: int) -> dict:
    """Spread the sites over k worker processes (loadtest.rehearse_worker); measure the server here."""
    a = reh.args
    tokens = await reh.server.issue(http, reh.specs, ttl=int(3600 + a.seconds * 2))
    tmp = Path(tempfile.mkdtemp(prefix="hoinghi-rehearse-w-"))
    t0_wall = time.time() + 2.0  # the workers need a moment to start
    reh.t0 = time.monotonic() + 2.0
    plain_args = {key: (str(v) if isinstance(v, Path) else v) for key, v in vars(a).items() if key != "func"}
    plain_args["talker_ids"] = reh.talker_ids  # chosen over all sites, not per process
    procs = []
    for w in range(k):
        idx = [i for i in range(len(reh.specs)) if i % k == w]
        if not idx:
            continue
        job = {"worker": w, "url": reh.server.url, "meeting": reh.server.meeting, "t0_wall": t0_wall, "order": idx,
               "args": plain_args, "tokens": {reh.specs[i].site_id: tokens[reh.specs[i].site_id] for i in idx},
               "specs": [{"site_id": reh.specs[i].site_id, "name": reh.specs[i].name, "role": reh.specs[i].role,
                          "level": reh.specs[i].level, "profile": reh.specs[i].profile.as_dict()} for i in idx],
               "nice": getattr(reh.args, "generator_nice", 0)}
        (tmp / f"job{w}.json").write_text(json.dumps(job, ensure_ascii=False))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "loadtest.rehearse_worker", str(tmp / f"job{w}.json"), str(tmp / f"result{w}.json"),
            cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            env=dict(os.environ, PYTHONPATH=str(ROOT)), limit=1 << 22)
        procs.append({"w": w, "proc": proc, "status": None, "prev": None, "joins_done": False, "result": None})

    async def read(p: dict) -> None:
        assert p["proc"].stdout is not None
        async for line in p["proc"].stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if "t_wall" in msg:
                p["status"] = msg
            elif msg.get("joins_done"):
                p["joins_done"] = True
            elif "result" in msg:
                p["result"] = msg["result"]
        p["joins_done"] = True  # a worker that died is done joining

    def send(cmd: str) -> None:
        for p in procs:
            if p["proc"].stdin is not None and p["proc"].returncode is None:
                p["proc"].stdin.write((cmd + "\n").encode())

    readers = [asyncio.ensure_future(read(p)) for p in procs]
    sampler = asyncio.ensure_future(_sample_processes(reh, http, procs))
    try:
        deadline = time.monotonic() + 2.0 + len(reh.specs) / a.join_rate + a.join_timeout + 30
        while not all(p["joins_done"] for p in procs) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        await asyncio.sleep(a.settle)
        reh.t_steady = time.monotonic()
        reh.metrics_first = await reh._metrics(http)
        reh.cpu_first = proc_cpu_s(reh.server.pid) if reh.server.pid else None
        send("steady")
        await asyncio.sleep(a.seconds)
        reh.cpu_last = proc_cpu_s(reh.server.pid) if reh.server.pid else None
        before = sum((p["status"] or {}).get("arrived", 0) for p in procs)
        reh.metrics_last = await reh._metrics(http)
        send("stop")
        reh.t_end = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*(p["proc"].wait() for p in procs)), 120)
        await asyncio.gather(*readers, return_exceptions=True)
    finally:
        sampler.cancel()
        for p in procs:
            if p["proc"].returncode is None:
                p["proc"].kill()
    results = []
    for p in procs:
        if p["result"] and Path(p["result"]).exists():
            results.append(json.loads(Path(p["result"]).read_text()))
        else:
            logger.warning("worker %s gave no result (exit %s)", p["w"], p["proc"].returncode)
    shutil.rmtree(tmp, ignore_errors=True)
    order = {spec.site_id: i for i, spec in enumerate(reh.specs)}
    sites = sorted((s for r in results for s in r["sites"]), key=lambda s: order.get(s["site_id"], 0))
    m = reh.metrics_last
    reh.consistency = {
        "server_packets_out": int(m.get("hoinghi_packets_total:out", 0)) if m else None,
        "sites_arrived_at_stop": sum(r["consistency"].get("sites_arrived_before_scrape", 0) for r in results),
        "sites_arrived_last_status": before,
        "note": f"{len(results)} worker processes: their counts and the server's are taken up to a sample apart",
    }
    return reh.result(sites=sites, workers=results)


async def _sample_processes(reh: Rehearsal, http: aiohttp.ClientSession, procs: list) -> None:
    """The parent's timeline: server figures here, the sites' totals from the workers' status lines."""
    a = reh.args
    next_t = reh.t0
    next_progress = reh.t0 + a.progress
    tl = reh.timeline
    prev_t = None
    while True:
        next_t += a.sample
        await asyncio.sleep(max(0.0, next_t - time.monotonic()))
        m = await reh._metrics(http)
        now = time.monotonic()
        dt = now - prev_t if prev_t else a.sample
        prev_t = now
        joined = flowing = 0
        dbytes = dexp = dgot = 0
        gen = 0.0
        for p in procs:
            st, pv = p["status"], p["prev"]
            if st is None:
                continue
            joined += st["joined"]
            flowing += st["flowing"]
            if pv is not None:
                dbytes += st["bytes"] - pv["bytes"]
                dexp += st["expected"] - pv["expected"]
                dgot += st["received"] - pv["received"]
                gen += (st["cpu_s"] - pv["cpu_s"]) / max(1e-6, st["t_wall"] - pv["t_wall"])
            p["prev"] = st
        tl["t"].append(round(now - reh.t0, 2))
        tl["joined"].append(joined)
        tl["flowing"].append(flowing)
        tl["rx_kbps"].append(round(dbytes * 8 / dt / 1000, 1))
        tl["loss_pct"].append(round(100.0 * (dexp - dgot) / dexp, 3) if dexp > 0 else None)
        tl["generator_cpu_pct"].append(round(100.0 * gen, 1))
        reh._server_sample(m, dt)
        if now >= next_progress:
            next_progress += a.progress
            exp = sum((p["status"] or {}).get("expected", 0) for p in procs)
            got = sum((p["status"] or {}).get("received", 0) for p in procs)
            fz = sum((p["status"] or {}).get("freezes", 0) for p in procs)
            failed = sum((p["status"] or {}).get("failed", 0) for p in procs)
            cpu = tl["server_cpu_pct"][-1]
            up = tl["hub_uplink_kbps"][-1]
            print(f"[{tl['t'][-1]:6.1f}s] joined {joined}/{len(reh.specs)}" + (f" ({failed} failed)" if failed else "")
                  + f", media flowing {flowing}/{len(reh.specs)}, received {tl['rx_kbps'][-1] / 1000:.1f} Mbit/s, "
                  f"loss so far {100.0 * (exp - got) / exp if exp else 0.0:.2f}%, freezes {fz}"
                  + (f", server CPU {cpu:.0f}%" if cpu is not None else "")
                  + (f", hub uplink {up / 1000:.1f} Mbit/s" if up is not None else "")
                  + f", {len(procs)} generator processes at {100 * gen:.0f}% CPU in all", flush=True)


def _share(flags: list) -> Optional[float]:
    """Share of True among the known (not None) samples."""
    known = [x for x in flags if x is not None]
    return round(sum(1 for x in known if x) / len(known), 3) if known else None


def _r(v: Optional[float], nd: int) -> Optional[float]:
    return None if v is None else round(v, nd)


def _num(v: Any) -> Any:
    return None if isinstance(v, float) and v != v else v  # NaN -> null (strict JSON)


def _viewer_summary(report: dict) -> dict:
    """What a viewer of the floor saw, from loadtest.measure (decoded pictures, stamps)."""
    t = report.get("total", {})
    slot = (report.get("slots") or [{}])[0]
    lat = t.get("latency_ms", {})
    return {
        "frames": t.get("frames", 0),
        "latency_ms_p50": _num(lat.get("p50")), "latency_ms_p95": _num(lat.get("p95")), "latency_ms_max": _num(lat.get("max")),
        "latency_samples": lat.get("n", 0),
        "freezes": t.get("freezes", 0), "frozen_s": t.get("frozen_s", 0.0), "skipped": t.get("skipped", 0),
        "stamp_errors": t.get("stamp_errors", 0),
        "fps": _num(slot.get("fps")), "resolutions": slot.get("resolutions"),
    }


def _merged_viewer(views: list) -> Optional[dict]:
    if not views:
        return None
    p50 = sorted(v["latency_ms_p50"] for v in views if v.get("latency_ms_p50") is not None)
    p95 = sorted(v["latency_ms_p95"] for v in views if v.get("latency_ms_p95") is not None)
    return {
        "sites": len(views),
        "frames": sum(v["frames"] for v in views),
        "latency_ms_p50_median": p50[len(p50) // 2] if p50 else None,
        "latency_ms_p95_max": p95[-1] if p95 else None,
        "freezes": sum(v["freezes"] for v in views),
        "frozen_s": round(sum(v["frozen_s"] for v in views), 3),
        "skipped": sum(v["skipped"] for v in views),
        "stamp_errors": sum(v["stamp_errors"] for v in views),
    }


LATENCY_BIN_MS = 1.0
LATENCY_BINS = 500  # 0..499 ms, then one overflow bin


def _latency_summary(samples: list) -> dict:
    """Per site: one-way latency (publisher -> SFU -> site, from RTP time and the slots'
    sender reports) as p50/p99 and a 1 ms histogram, so totals over sites (and over
    generator processes) merge exactly."""
    if not samples:
        return {"latency_ms_p50": None, "latency_ms_p99": None, "latency_hist": []}
    hist = [0] * (LATENCY_BINS + 1)
    for v in samples:
        hist[min(LATENCY_BINS, max(0, int(v / LATENCY_BIN_MS)))] += 1
    xs = sorted(samples)
    return {"latency_ms_p50": round(_pctl(xs, 50), 2), "latency_ms_p99": round(_pctl(xs, 99), 2),
            "latency_samples": len(xs), "latency_hist": _trim(hist)}


def _send_lag_window(hist0: Optional[list]) -> Optional[list]:
    """How late this process's frames left (media_sender.send_lag_hist) since the steady
    window began (1 ms bins); None when this process sent no pre-encoded media."""
    if hist0 is None:
        return None
    d = [a - b for a, b in zip(media_sender.send_lag_hist, hist0)]
    return d if any(d) else None


def _hist_pctl(hist: Optional[list], key: str) -> dict:
    """p50/p99 (ms, the middle of the bin) of a histogram of 1 ms bins (the last one: longer)."""
    total = sum(hist or ())
    if not total:
        return {f"{key}_p50": None, f"{key}_p99": None}
    out = {}
    for q, name in ((0.5, "p50"), (0.99, "p99")):
        acc = 0
        for i, n in enumerate(hist):  # type: ignore[arg-type]
            acc += n
            if acc >= q * total:
                out[f"{key}_{name}"] = (i + 0.5) * LATENCY_BIN_MS
                break
    return out


def _trim(hist: list) -> list:
    while hist and hist[-1] == 0:
        hist.pop()
    return hist


def _merged_latency(sums: list) -> dict:
    total: list[int] = []
    for x in sums:
        add_counts(total, x.get("latency_hist") or [])
    return {**_hist_pctl(total, "latency_ms"), "latency_samples": sum(total)}


def _pctl(xs: list, q: float) -> Optional[float]:
    if not xs:
        return None
    return round(xs[min(len(xs) - 1, int(q / 100 * len(xs)))], 3)


def _top_rid(rids: list) -> Optional[str]:
    order = {"q": 0, "h": 1, "f": 2}
    return max(rids, key=lambda r: order.get(r, -1)) if rids else None


# --------------------------------------------------------------------------- who will struggle

TEXT = {
    "vi": {
        "no_join": "không vào được hội nghị ({error})",
        "no_media": "vào được nhưng không nhận được hình/tiếng",
        "fits_lowest": "đường truyền {link} chỉ đủ {layer} cho hình chính (lớp thấp nhất)",
        "stage_paused": "hình chính bị tạm dừng {pct:.0f}% thời gian: đường truyền {link} không đủ cả lớp thấp nhất",
        "paused": "trung bình {n:.1f}/{m} hình nhỏ bị tạm dừng (thiếu băng thông)",
        "loss": "mất gói {pct:.1f}%",
        "unlimited": "không giới hạn (máy chủ ước lượng {est:.0f} kbit/s)",
        "loss_elsewhere": "mất gói {pct:.1f}%, không phải trên đường xuống của điểm này ({own:.1f}%): trên đường lên của các điểm cầu khác, hoặc máy chạy thử quá tải",
        "loss_pacer": "mất gói {pct:.1f}%: máy chủ phải bỏ bớt vì đường truyền ước tính chỉ {est:.0f} kbit/s (trên đường xuống của điểm này {own:.1f}%)",
        "freezes": "{n} lần đứng hình ({s:.1f} s)",
        "uplink": "đường lên {link} chỉ gửi được {sendable} trong khi cần {wanted} (khi điểm cầu này được xem lớn)",
        "uplink_loss": "mất gói chiều lên {pct:.1f}% (các điểm khác thấy hình của điểm cầu này kém)",
    },
    "en": {
        "no_join": "could not join ({error})",
        "no_media": "joined but received no media",
        "fits_lowest": "link {link} fits only {layer} of the floor (the lowest layer)",
        "stage_paused": "the main video was paused {pct:.0f}% of the time: link {link} does not fit even the lowest layer",
        "paused": "on average {n:.1f}/{m} thumbnails paused (not enough bandwidth)",
        "loss": "{pct:.1f}% loss",
        "unlimited": "unlimited (server estimate {est:.0f} kbit/s)",
        "loss_elsewhere": "{pct:.1f}% loss, not on this site's own downlink ({own:.1f}%): on other sites' uplinks, or this machine's generators falling behind",
        "loss_pacer": "{pct:.1f}% loss: the server dropped what its estimate of this link ({est:.0f} kbit/s) could not carry (on the link itself {own:.1f}%)",
        "freezes": "{n} freezes ({s:.1f} s)",
        "uplink": "uplink {link} carries only {sendable} of the {wanted} asked for (when this site is shown large)",
        "uplink_loss": "{pct:.1f}% upstream loss (others see this site's video poorly)",
    },
}


def struggles(site: dict, simulcast: bool, lang: str = "vi") -> list[str]:
    """Plain reasons a site will have a poor meeting, from its own figures."""
    t = TEXT.get(lang, TEXT["vi"])
    if not site["joined"]:
        return [t["no_join"].format(error=site["error"] or "?")]
    s = site["summary"]
    if not s:
        return []
    if not s.get("packets"):
        return [t["no_media"]]
    out = []
    p = site["profile"]
    if p.get("down_kbps"):
        link = f"{p['down_kbps']:g} kbit/s"
    else:  # not limited here: whatever held it back is the server's estimate of the link
        link = t["unlimited"].format(est=s.get("estimate_kbps_last") or 0)
    stage_paused = s.get("stage_paused_share") or 0.0
    if stage_paused >= 0.25:
        out.append(t["stage_paused"].format(pct=100 * stage_paused, link=link))
    elif s.get("layers_available", 1) > 1 and s.get("stage_layer_max") == 0 and site["role"] != "hub":
        out.append(t["fits_lowest"].format(link=link, layer=RID_NAMES.get(s.get("stage_rid_top") or "q", "180p")))
    if (s.get("paused_slots_mean") or 0) >= 0.5:
        out.append(t["paused"].format(n=s["paused_slots_mean"], m=max(1, s.get("video_slots_filled") or 1)))
    if (s.get("loss_pct") or 0) >= LOSS_STRUGGLE_PCT:
        own = s.get("own_link_loss_pct") or 0.0
        # where the packets were lost: this site's own link; the server's pacer for this site
        # (it dropped what waited over a second at this site's estimate); else between the
        # publishers and the server, or on this machine (generators falling behind)
        lost = s["loss_pct"] / 100.0 * s["packets"] / max(1e-9, 1.0 - s["loss_pct"] / 100.0)
        by_pacer = s.get("server_pacer_dropped") or 0
        if own >= s["loss_pct"] / 2:
            key = "loss"
        elif lost and by_pacer >= lost / 2:
            key = "loss_pacer"
        else:
            key = "loss_elsewhere"
        out.append(t[key].format(pct=s["loss_pct"], own=own, est=s.get("estimate_kbps_last") or 0))
    n_fz = s["freezes"] - s.get("freezes_generator", 0)  # the generator's own stalls are not the server's
    fz_s = max(0.0, s["freeze_s"] - s.get("freeze_s_generator", 0.0))
    per_min = n_fz / max(1e-6, s["seconds"]) * 60
    frozen_share = fz_s / max(1e-6, s["seconds"])
    if n_fz > 0 and (frozen_share >= FROZEN_SHARE_STRUGGLE or (n_fz >= 2 and per_min >= FREEZES_PER_MIN_STRUGGLE)):
        out.append(t["freezes"].format(n=n_fz, s=fz_s))
    loss_in = s.get("server_loss_in")
    sendable = s.get("uplink_layers")
    wanted = s.get("publish_layers")
    if simulcast and sendable is not None and wanted and any(r not in sendable for r in wanted):
        out.append(t["uplink"].format(link=f"{p['up_kbps']:g} kbit/s" if p.get("up_kbps") else site["link"],
                                      sendable="/".join(RID_NAMES.get(r, r) for r in sendable),
                                      wanted="/".join(RID_NAMES.get(r, r) for r in wanted)))
    if loss_in is not None and loss_in * 100 >= LOSS_STRUGGLE_PCT:
        out.append(t["uplink_loss"].format(pct=100 * loss_in))
    return out


# --------------------------------------------------------------------------- output


def summary_table(result: dict) -> str:
    head = f"{'site':<34} {'link':<26} {'join s':>6} {'1st s':>6} {'rx kbit/s':>9} {'stage':>7} {'loss%':>6} {'frz':>4} {'layer':>7} {'paused':>6}"
    lines = [head, "-" * len(head)]
    for s in result["sites"]:
        x = s["summary"] or {}
        share = x.get("stage_layer_share") or {}
        layer = "/".join(f"{k}:{int(100 * v)}" for k, v in share.items()) or "-"
        lines.append(
            f"{s['name'][:34]:<34} {s['link'][:26]:<26} {_f(s['join_s'], 2):>6} {_f(s['first_media_s'], 2):>6} "
            f"{_f(x.get('rx_kbps'), 0):>9} {_f(x.get('stage_kbps'), 0):>7} {_f(x.get('loss_pct'), 2):>6} "
            f"{x.get('freezes', '-'):>4} {layer:>7} {_f(x.get('paused_slots_mean'), 1):>6}")
    t = result["totals"]
    sv = result["server"]
    lines.append("-" * len(head))
    lines.append(f"joined {t['joined']}/{t['sites']}, loss {_f(t['loss_pct'], 3)}%, freezes {t['freezes']}, "
                 f"latency p50 {_f(t.get('latency_ms_p50'), 1)} / p99 {_f(t.get('latency_ms_p99'), 1)} ms, "
                 + (f"viewers (decoded, {t['viewer']['sites']} sites): glass-to-glass p50 {_f(t['viewer']['latency_ms_p50_median'], 1)} ms, "
                    f"{t['viewer']['freezes']} frozen, {t['viewer']['skipped']} skipped frames; " if t.get("viewer") else "")
                 + (f"generators sent frames p50 {_f(t['send_lag_ms_p50'], 0)} / p99 {_f(t['send_lag_ms_p99'], 0)} ms late "
                    "(in the latency above; this machine's, not the server's); " if t.get("send_lag_ms_p50") is not None else "")
                 + f"join p50 {_f(t['join_s_p50'], 2)} s (max {_f(t['join_s_max'], 2)}), first media p50 {_f(t['first_media_s_p50'], 2)} s; "
                 f"server CPU {_f(sv.get('cpu_pct_mean'), 0)}%, RSS max {_f(sv.get('rss_mb_max'), 0)} MB, "
                 + (f"SFU-added latency: kernel in -> last copy out p50 {_le(sv.get('forward_delay_ms_p50'))} / p99 "
                    f"{_le(sv.get('forward_delay_ms_p99'))} / max {_le(sv.get('forward_delay_ms_max'))} ms, "
                    f"then pacer p50 {_le(sv['pacer_wait_ms_p50'])} / p99 {_le(sv['pacer_wait_ms_p99'])} ms, "
                    f"worker event-loop lag p50 {_le(sv.get('loop_lag_ms_p50'))} / p99 {_le(sv.get('loop_lag_ms_p99'))} / "
                    f"max {_le(sv.get('loop_lag_ms_max'))} ms ({sv.get('loop_lag_over_50ms', 0)} times over 50 ms), "
                    f"garbage-collector pauses max {_le(sv.get('gc_pause_ms_max'))} ms ({sv.get('gc_pause_over_50ms', 0)} over 50 ms); "
                    if sv.get("pacer_wait_ms_p50") is not None else "")
                 + f"{_f(sv.get('us_per_forwarded_packet'), 1)} us/forwarded pkt, hub uplink mean {_f((sv.get('hub_uplink_kbps_mean') or 0) / 1000, 1)} "
                 f"/ peak {_f((sv.get('hub_uplink_kbps_peak') or 0) / 1000, 1)} Mbit/s"
                 + (f"; video slot switches {sv['layer_switches']}, audio slot switches {sv.get('audio_switches', 0)}, "
                    f"speaker changes {sv.get('speaker_changes', 0)}" if sv.get("layer_switches") is not None else ""))
    if sv.get("cpu_note"):
        lines.append(f"note: {sv['cpu_note']}")
    for w in result.get("warnings", []):
        lines.append(f"warning: {w}")
    return "\n".join(lines)


def _le(v: Optional[float]) -> str:
    """A histogram quantile is known to a bucket: "<= 2", or "> 1000" past the last bound."""
    if v is None:
        return "-"
    return f"> {-v:g}" if v < 0 else f"<= {v:g}"


def histogram_quantiles(m0: dict, m1: dict, metric: str, qs: tuple[float, ...]) -> Optional[tuple[float, ...]]:
    """Quantiles of a Prometheus histogram over the window between two parsed scrapes, as
    the upper bound (ms) of the bucket they fall in; past the last bound, minus that bound."""
    prefix = metric + "_bucket:le="
    bounds = sorted((float(k[len(prefix):]), k) for k in m1 if k.startswith(prefix) and k[len(prefix):] != "+Inf")
    total = m1.get(prefix + "+Inf", 0.0) - m0.get(prefix + "+Inf", 0.0)
    if not bounds or total <= 0:
        return None
    out = []
    for q in qs:
        v = -bounds[-1][0] * 1000
        for bound, k in bounds:
            if m1.get(k, 0.0) - m0.get(k, 0.0) >= q * total:
                v = bound * 1000
                break
        out.append(round(v, 3))
    return tuple(out)


def histogram_over(m0: dict, m1: dict, metric: str, bound_s: float) -> int:
    """Observations above `bound_s` (one of the histogram's bounds) between two scrapes."""
    inf = m1.get(f"{metric}_bucket:le=+Inf", 0.0) - m0.get(f"{metric}_bucket:le=+Inf", 0.0)
    key = f"{metric}_bucket:le={bound_s:g}"
    return int(inf - (m1.get(key, 0.0) - m0.get(key, 0.0)))


def _f(v: Any, nd: int) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{nd}f}"


# --------------------------------------------------------------------------- entry points


def build_server(args: argparse.Namespace) -> Server:
    if args.url:
        s = Server(args.url, args.meeting)
        if args.secret:
            from server.auth import TokenService

            if not args.secret.exists():
                raise SystemExit(f"hoinghi rehearse: secret file {args.secret} does not exist")
            s.tokens = TokenService(args.secret)
        s.admin_token = args.admin_token
        if args.server_pid:
            s.pid = args.server_pid
        elif urlparse(args.url).hostname in ("127.0.0.1", "localhost"):
            s.pid = None  # /metrics process_* figures are used
        return s
    if args.server == "inprocess":
        return InProcessServer(args.meeting, workers=args.workers if args.workers is not None else 0)
    return SubprocessServer(args.meeting, keep=args.keep_server, workers=args.workers)


async def rehearse(args: argparse.Namespace) -> dict:
    registry = read_registry(args.registry)
    profiles = read_profiles_csv(args.profiles) if args.profiles else None
    specs = plan_sites(registry, args.sites, profiles, args.mix)
    server = build_server(args)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as http:
        await server.start(http, len(specs))
        print(f"rehearsal: {len(specs)} sites against {server.url} ({server.mode}), joining {args.join_rate:g}/s, "
              f"then {args.seconds:g} s", flush=True)
        try:
            reh = Rehearsal(args, server, specs)
            print(f"media: {reh.media.describe()}", flush=True)
            if args.processes > 1:
                result = await run_processes(reh, http, args.processes)
            else:
                result = await reh.run(http)
        finally:
            await server.stop()
    if args.compare_janus:
        from .rehearse_janus import rehearse_janus

        result["janus"] = await rehearse_janus(args, specs, result)
        if args.processes > 1 and not result["janus"].get("error"):
            result["janus"]["note"] = (result["janus"].get("note", "") + "; the Janus run hosts every site in this one "
                                       "process (no --processes): compare its generator warnings before its figures")
    return result


def write_outputs(result: dict, out: Path) -> tuple[Path, Path]:
    from .rehearse_report import render_html

    out.mkdir(parents=True, exist_ok=True)
    jp = out / "rehearsal.json"
    jp.write_text(json.dumps(result, ensure_ascii=False, indent=1, default=float))
    hp = out / "rehearsal.html"
    hp.write_text(render_html(result), encoding="utf-8")
    return jp, hp


def run_cli(args: argparse.Namespace, argv: Optional[list[str]] = None, prog: str = "hoinghi rehearse") -> int:
    if args.sites < 1 or args.seconds <= 0 or args.join_rate <= 0:
        print("hoinghi rehearse: --sites, --seconds and --join-rate must be positive", file=sys.stderr)
        return 2
    argv = list(sys.argv[2:] if argv is None else argv)
    args.command_line = prog + " " + " ".join(a if a != args.admin_token else "***" for a in argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        import uvloop

        result = uvloop.run(rehearse(args))
    except ImportError:  # pragma: no cover
        result = asyncio.run(rehearse(args))
    jp, hp = write_outputs(result, args.out)
    print()
    print(summary_table(result))
    if result["struggling"]:
        print("\n" + ("Điểm cầu sẽ gặp khó khăn:" if args.lang == "vi" else "Sites that will struggle:"))
        for s in result["struggling"]:
            print(f"  - {s['text']}")
    if result.get("janus"):
        from .rehearse_janus import comparison_lines

        print()
        print("\n".join(comparison_lines(result)))
    print(f"\nwrote {jp} and {hp}")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.rehearse", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    args = p.parse_args(argv)
    return run_cli(args, sys.argv[1:] if argv is None else argv, "python -m loadtest.rehearse")


if __name__ == "__main__":
    sys.exit(main())
