"""Locust users that are synthetic sites: real signaling, ICE/DTLS/SRTP, media without codecs.

    LOCUST_SKIP_MONKEY_PATCH=1 locust -f loadtest/locustfile.py -H http://127.0.0.1:8080 \\
        --hoinghi-secret hoinghi-data/secret.key                      # web UI on :8089
    LOCUST_SKIP_MONKEY_PATCH=1 locust -f loadtest/locustfile.py --headless -u 20 -r 2 -t 60s \\
        --hoinghi-serve --csv out/run                                  # starts its own server

Each user joins the meeting as one site of the registry (server/data/sites-sample.csv; the
first user is the hub), publishes media that costs nothing to encode (pre-encoded simulcast
VP8 + Opus when loadtest/media_source.py is there, else rawpeer's synthetic VP8) behind the
link profile the `--link-mix` deals it (loadtest/linkprofile.py), and receives every slot
the server gives it, measured from RTP headers only (loadtest/sitesim.SiteReceiver).

What locust shows (request type `webrtc`):
  join          time from opening /ws to `joined`
  connect       time from `joined` to DTLS up (offer/answer, ICE, DTLS)
  first media   time from opening /ws to the first media packet
  media         every `--media-interval` s per user: response time = the worst video
                jitter in ms, length = bytes received; a failure when no media arrived,
                loss over `--max-loss` %, or a new freeze (the message says which)

Why the odd plumbing (shared/notes/testing-here.md, "Locust with aiortc"): gevent's monkey
patching turns aiortc's threads into greenlets (stalls, hung exits), so it must be off
(LOCUST_SKIP_MONKEY_PATCH=1, checked below). Every site of a locust process lives on one
asyncio loop in a real OS thread, started from an `events.init` listener; users submit
coroutines with run_coroutine_threadsafe and wait on a gevent AsyncResult that the loop
thread wakes through the hub's run_callback_threadsafe; request events are fired from the
user's own greenlet, never from the asyncio thread.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Optional

import gevent
from gevent.event import AsyncResult
from locust import User, between, events, task
from locust.runners import WorkerRunner

if os.environ.get("LOCUST_SKIP_MONKEY_PATCH") != "1":
    raise RuntimeError(
        "run locust with LOCUST_SKIP_MONKEY_PATCH=1: gevent's monkey patching breaks aiortc "
        "(see the docstring of loadtest/locustfile.py)"
    )

from loadtest.linkprofile import DEFAULT_MIX, PRESETS, plan_sites, read_registry  # noqa: E402

logger = logging.getLogger("hoinghi.locust")
_MAIN_PID = os.getpid()  # the process that imported this file; --processes forks the workers from it
SAMPLE_REGISTRY = Path(__file__).resolve().parents[1] / "server" / "data" / "sites-sample.csv"
REQUEST_TYPE = "webrtc"


# --------------------------------------------------------------------------- the asyncio thread


class AsyncBridge:
    """One asyncio loop in a real OS thread for all the sites of this locust process."""

    def __init__(self, poll: bool = False) -> None:
        self.poll = poll
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="hoinghi-asyncio", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, coro: Any, timeout: Optional[float] = None) -> Any:
        """Run `coro` on the loop; block only the calling greenlet until it is done.

        The greenlet is woken through the gevent hub's thread-safe callback; in a locust
        process forked by `--processes` that watcher is not re-armed (gevent is not patched, so
        the fork is a plain os.fork), so there the greenlet polls every 5 ms instead.
        """
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        if self.poll:
            deadline = None if timeout is None else time.monotonic() + timeout
            while not fut.done():
                if deadline is not None and time.monotonic() > deadline:
                    fut.cancel()
                    raise TimeoutError(f"no result within {timeout} s")
                gevent.sleep(0.005)
            return fut.result()
        hub = gevent.get_hub()
        result: AsyncResult = AsyncResult()

        def deliver(f: Any) -> None:
            try:
                result.set(f.result())
            except BaseException as exc:  # includes CancelledError: hand it to the greenlet
                result.set_exception(exc)

        fut.add_done_callback(lambda f: hub.loop.run_callback_threadsafe(deliver, f))
        try:
            return result.get(timeout=timeout)
        except gevent.Timeout:
            fut.cancel()
            raise TimeoutError(f"no result within {timeout} s") from None

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class Shared:
    """What every user of this process shares: the loop, HTTP session, media, feedback timer."""

    bridge: Optional[AsyncBridge] = None
    http: Any = None
    media: Any = None
    ticker: Any = None
    server: Any = None
    url: str = ""
    tokens: Any = None
    admin_token: Optional[str] = None
    meeting = "demo"
    specs: list = []
    counter = itertools.count()
    prefix = ""
    options: Any = None


async def _setup(options: Any, host: str) -> None:
    import aiohttp

    from loadtest.rawpeer import FeedbackTicker
    from loadtest.sitesim import make_media

    Shared.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=None))
    Shared.media = make_media(options.hoinghi_media, audio=True)
    Shared.media.start()
    Shared.ticker = FeedbackTicker([], twcc_interval=0.1)
    Shared.ticker.start()
    Shared.meeting = options.hoinghi_meeting
    if options.hoinghi_serve:
        from loadtest.rehearse import SubprocessServer

        Shared.server = SubprocessServer(Shared.meeting)
        await Shared.server.start(Shared.http, len(Shared.specs))
        Shared.url = Shared.server.url
        Shared.tokens = Shared.server.tokens
    else:
        if not host:
            raise RuntimeError("give the server's URL with -H/--host, or --hoinghi-serve")
        Shared.url = host.rstrip("/")
        if options.hoinghi_secret:
            from server.auth import TokenService

            Shared.tokens = TokenService(Path(options.hoinghi_secret))
        Shared.admin_token = options.hoinghi_admin_token
        if Shared.tokens is None and not Shared.admin_token:
            raise RuntimeError("no way to get join tokens: --hoinghi-secret FILE or --hoinghi-admin-token TOKEN")


async def _teardown() -> None:
    if Shared.media is not None:
        await Shared.media.stop()
    if Shared.ticker is not None:
        await Shared.ticker.stop()
    if Shared.server is not None:
        await Shared.server.stop()
    if Shared.http is not None:
        await Shared.http.close()


async def _token(spec: Any) -> str:
    if Shared.tokens is not None:
        return Shared.tokens.issue(Shared.meeting, spec.site_id, spec.role, 3 * 3600, name=spec.name)
    url = f"{Shared.url}/api/meetings/{Shared.meeting}/links"
    async with Shared.http.post(url, json={"site_ids": [spec.site_id]},
                                headers={"Authorization": f"Bearer {Shared.admin_token}"}) as r:
        data = await r.json(content_type=None)
        if r.status != 200:
            raise RuntimeError(f"join link refused ({r.status}): {data}")
    return data["links"][0]["url"].split("#t=", 1)[1]


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    g = parser.add_argument_group("hoinghi")
    g.add_argument("--hoinghi-secret", default=os.environ.get("HOINGHI_SECRET", ""),
                   help="the server's secret file: join tokens are minted here")
    g.add_argument("--hoinghi-admin-token", default=os.environ.get("HOINGHI_ADMIN_TOKEN", ""),
                   help="a hub/operator token: join links come from the server's admin API")
    g.add_argument("--hoinghi-serve", action="store_true", default=False,
                   help="start a server here (temp SQLite, loopback) instead of -H")
    g.add_argument("--hoinghi-meeting", default="demo")
    g.add_argument("--hoinghi-media", default="auto", choices=("auto", "preencoded", "synthetic"))
    g.add_argument("--link-mix", default="lan", help=f"link profiles dealt to users, e.g. {DEFAULT_MIX} "
                                                     f"(presets: {', '.join(PRESETS)}); default lan (unshaped)")
    g.add_argument("--hoinghi-registry", default=str(SAMPLE_REGISTRY))
    g.add_argument("--media-interval", type=float, default=2.0, help="seconds between media health reports per user")
    g.add_argument("--max-loss", type=float, default=5.0, help="media health fails above this loss %%")


@events.init.add_listener
def _init(environment: Any, **_: Any) -> None:
    opts = environment.parsed_options
    if opts is None:
        return
    for noisy in ("aioice", "aiortc"):  # one INFO line per ICE check of every site otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    Shared.options = opts
    registry = read_registry(Path(opts.hoinghi_registry))
    Shared.specs = plan_sites(registry, max(len(registry), 1000), mix=opts.link_mix)
    runner = environment.runner
    if isinstance(runner, WorkerRunner):  # several locust processes: keep their site ids apart
        Shared.prefix = f"w{runner.worker_index}-"
    if opts.hoinghi_serve and runner is not None and runner.__class__.__name__ != "LocalRunner":
        raise RuntimeError("--hoinghi-serve starts a server per locust process: with --processes or "
                           "master/workers, start one server and give its URL with -H")
    if runner is not None and runner.__class__.__name__ == "MasterRunner":
        return  # the master only aggregates
    Shared.bridge = AsyncBridge(poll=os.getpid() != _MAIN_PID)
    Shared.bridge.call(_setup(opts, environment.host or ""), timeout=300)


@events.quitting.add_listener
def _quit(environment: Any, **_: Any) -> None:
    if Shared.bridge is not None:
        try:
            Shared.bridge.call(_teardown(), timeout=30)
        finally:
            Shared.bridge.stop()
            Shared.bridge = None


# --------------------------------------------------------------------------- the user


class SiteUser(User):
    """One site: joins on start, then reports its media health every --media-interval s."""

    wait_time = between(0.9, 1.1)

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        self.site: Any = None
        self.spec: Any = None
        self.last_report = 0.0
        self.prev: dict = {}

    def _fire(self, name: str, ms: float, length: int = 0, exc: Optional[BaseException] = None) -> None:
        self.environment.events.request.fire(request_type=REQUEST_TYPE, name=name, response_time=ms,
                                             response_length=length, exception=exc, context={})

    def on_start(self) -> None:
        from dataclasses import replace

        n = next(Shared.counter)
        spec = Shared.specs[n % len(Shared.specs)]
        if Shared.prefix or n >= len(Shared.specs):
            spec = replace(spec, site_id=f"{Shared.prefix}{spec.site_id}-{n}", role="site")
        self.spec = spec
        t0 = time.monotonic()
        try:
            self.site = Shared.bridge.call(self._join(spec), timeout=60)  # type: ignore[union-attr]
        except Exception as exc:
            self._fire("join", (time.monotonic() - t0) * 1000, exc=exc)
            self.site = None
            return
        s = self.site
        self._fire("join", (s.join_s or 0) * 1000)
        self._fire("connect", ((s.connect_s or 0) - (s.join_s or 0)) * 1000)
        # first media: wait for it here (bounded), so every user reports it once
        deadline = time.monotonic() + 15
        while s.receiver.first_media is None and time.monotonic() < deadline:
            gevent.sleep(0.05)
        if s.receiver.first_media is None:
            self._fire("first media", 15000, exc=RuntimeError("no media within 15 s of joining"))
        else:
            self._fire("first media", (s.first_media_s or 0) * 1000)
        self.last_report = time.monotonic()
        self.prev = self._snapshot()

    @staticmethod
    async def _join(spec: Any) -> Any:
        from loadtest.sitesim import SimSite

        token = await _token(spec)
        site = SimSite(spec, Shared.http, Shared.url, token, Shared.media)
        Shared.ticker.peers.append(site.peer)
        await site.connect(timeout=30)
        return site

    def _snapshot(self) -> dict:
        r = self.site.receiver
        streams = {s.ssrc: (s.received, s.ext, s.first_ext) for s in list(r.streams.values())}
        freezes = sum(t.freezes for t in list(r.tracks.values()) if t.video)
        jitter = max((t.jitter for t in list(r.tracks.values()) if t.video), default=0.0)
        return {"streams": streams, "bytes": r.bytes, "freezes": freezes, "jitter": jitter, "packets": r.packets}

    @task
    def media(self) -> None:
        if self.site is None:
            return
        now = time.monotonic()
        if now - self.last_report < Shared.options.media_interval:
            return
        cur = self._snapshot()
        prev = self.prev
        expected = received = 0
        for ssrc, (got, ext, first) in cur["streams"].items():
            g0, e0, _ = prev["streams"].get(ssrc, (0, first - 1, first))
            expected += ext - e0
            received += got - g0
        dt = now - self.last_report
        kbps = (cur["bytes"] - prev["bytes"]) * 8 / dt / 1000
        loss = 100.0 * (expected - received) / expected if expected > 0 else 0.0
        new_freezes = cur["freezes"] - prev["freezes"]
        problems = []
        if cur["packets"] == prev["packets"]:
            problems.append(f"no media for {dt:.1f} s")
        if loss > Shared.options.max_loss:
            problems.append(f"loss {loss:.1f}% > {Shared.options.max_loss:g}%")
        if new_freezes:
            problems.append(f"{new_freezes} freeze(s)")
        exc = RuntimeError(f"{'; '.join(problems)} ({kbps:.0f} kbit/s)") if problems else None
        self._fire("media", cur["jitter"] * 1000, int(cur["bytes"] - prev["bytes"]), exc)
        self.prev = cur
        self.last_report = now

    def on_stop(self) -> None:
        if self.site is not None and Shared.bridge is not None:
            site = self.site
            self.site = None
            try:
                Shared.bridge.call(site.close(), timeout=10)
            except Exception:
                logger.debug("closing %s failed", site.spec.site_id, exc_info=True)
            if Shared.ticker is not None and site.peer in Shared.ticker.peers:
                Shared.ticker.peers.remove(site.peer)  # list is read on the loop; a removal is atomic
