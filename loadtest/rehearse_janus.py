"""The rehearsal's load against Janus VideoRoom, for a side-by-side with hoinghi.

`hoinghi rehearse --compare-janus` runs this after the hoinghi run, with the same sites, the
same links (loadtest/linkprofile.py), the same media and the same measuring receivers
(loadtest/sitesim.py). Janus (shared/janus/start-janus.sh, JANUS_EVENT_LOOPS=1: all handles on
one event loop, its best configuration on few cores) is driven through loadtest/janus_client.py.

What each site gets is made as close to hoinghi as Janus allows: a site is a publisher handle
(its camera and microphone; the uplink side of its link) and a subscriber handle (the downlink
side) receiving the video of as many feeds as hoinghi gave it video slots (the hub first,
then in join order) and the audio of as many as its audio slots. With simulcast, the stage
feed is asked for at the top substream and the thumbnails at the lowest, which is what
hoinghi's allocator does on a link that has room; Janus has no per-receiver bandwidth
estimate, so on a narrow link it keeps sending what was asked for (that shows as loss).

Figures, over the same `--seconds` window: Janus's CPU (utime+stime of its process from
/proc), packets forwarded (what reached the sites plus what their shaped links dropped,
counted the same way for hoinghi), CPU per forwarded packet, loss, freezes, bitrate.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import time
from dataclasses import replace
from typing import Any, Optional

import aiohttp

from .janus_client import ROOM, JanusError, JanusPublisher, JanusSession, JanusSubscriber, start_janus, stop_janus
from .linkprofile import SiteSpec
from .rawpeer import FeedbackTicker, window_loss
from .sitesim import RawLinkShaper, SiteReceiver, StallWatch, choose_talkers, make_media

logger = logging.getLogger("rehearse.janus")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MeasuredSubscriber(JanusSubscriber):
    """A Janus subscriber handle that asks for given (feed, mid) streams and substreams."""

    def __init__(self, session: JanusSession, name: str, streams: list[dict], substreams: dict[tuple, int], **kw: Any) -> None:
        super().__init__(session, name, [s["feed"] for s in streams], **kw)
        self.streams = streams
        self.substreams = substreams  # (feed, mid) -> substream
        self.notes: list[str] = []
        self.configured: list[dict] = []

    async def negotiate(self) -> None:
        assert self.handle is not None
        body = {"request": "join", "ptype": "subscriber", "room": ROOM, "streams": self.streams}
        event = await self.session.message(self.handle, body)
        jsep = event.get("jsep")
        if not jsep or jsep.get("type") != "offer":
            raise JanusError(f"{self.name}: Janus sent no offer: {event}")
        answer = await self.answer_offer(jsep["sdp"])
        await self.session.message(self.handle, {"request": "start", "room": ROOM}, jsep={"type": "answer", "sdp": answer})
        if not self.substreams:
            return
        cfg = []
        for s in event.get("plugindata", {}).get("data", {}).get("streams", []):
            sub = self.substreams.get((s.get("feed_id"), str(s.get("feed_mid"))))
            if sub is not None and s.get("type") == "video":
                cfg.append({"mid": str(s["mid"]), "substream": sub})
        self.configured = cfg
        await self.configure()

    async def configure(self) -> None:
        """Ask for the substreams (again: Janus keeps a request made before it knew the layers)."""
        if self.configured and self.handle is not None:
            try:
                await self.session.message(self.handle, {"request": "configure", "streams": self.configured})
            except JanusError as exc:
                self.notes.append(f"configure substreams: {exc}")


class JanusSite:
    """One site against Janus: publisher (uplink side) + measured subscriber (downlink side)."""

    def __init__(self, spec: SiteSpec, session: JanusSession, media: Any, queue_ms: float, seed: int, dtx: Optional[bool] = None) -> None:
        self.spec = spec
        self.media = media
        kw = dict(media.peer_kwargs(spec))
        kw["dtx"] = dtx
        self.pub = JanusPublisher(session, spec.name, **kw)
        p = spec.profile
        up = replace(p, down_kbps=None)
        down = replace(p, up_kbps=None)
        self.pub_shaper = RawLinkShaper(up, queue_ms=queue_ms, seed=seed) if up.shaped else None
        self.sub_link = down
        self.queue_ms = queue_ms
        self.seed = seed
        self.sub: Optional[MeasuredSubscriber] = None
        self.receiver = SiteReceiver()
        self.sub_shaper: Optional[RawLinkShaper] = None
        self.error: Optional[str] = None

    async def publish(self) -> None:
        await self.pub.join()
        await self.pub.negotiate()
        await self.pub.wait_connected()
        if self.pub_shaper is not None:
            self.pub_shaper.attach(self.pub.transport)
        added = self.media.add(self.pub, self.spec.profile)
        if asyncio.iscoroutine(added):
            await added

    def mids(self) -> dict[str, str]:
        """kind -> mid of what this site publishes."""
        out = {}
        for t in self.pub.pc.getTransceivers():
            if t.direction == "sendonly" and t.mid is not None:
                out.setdefault(t.kind, t.mid)
        return out

    async def subscribe(self, session: JanusSession, streams: list[dict], substreams: dict[tuple, int]) -> None:
        sub = MeasuredSubscriber(session, self.spec.name + "/sub", streams, substreams, feedback="twcc")
        sub.receiver = self.receiver
        self.receiver.read_stamps = getattr(sub.receiver, "read_stamps", True) and not getattr(self.media, "simulcast", False)
        sub.transport.on_rtp = self.receiver.on_rtp
        self.sub = sub
        await sub.join()
        await sub.negotiate()
        await sub.wait_connected()
        if self.sub_link.shaped:
            self.sub_shaper = RawLinkShaper(self.sub_link, queue_ms=self.queue_ms, seed=self.seed + 7919)
            self.sub_shaper.attach(sub.transport)

    def arrived(self) -> int:
        r = self.receiver
        n = r.packets + r.rtx_packets + sum(s.dups for s in r.streams.values()) + sum(s.dups for s in r.rtx.values())
        d = self.sub_shaper.down if self.sub_shaper else None
        if d is not None:
            n += d.dropped_rtp + d.queued_rtp()
        return n

    async def close(self) -> None:
        self.media.remove(self.pub)
        for sh in (self.pub_shaper, self.sub_shaper):
            if sh is not None:
                sh.close()
        for peer in (self.sub, self.pub):
            if peer is not None:
                try:
                    await asyncio.wait_for(peer.close(), 5)
                except Exception:  # teardown of one must not stop the others'
                    logger.debug("close failed", exc_info=True)


async def rehearse_janus(args: argparse.Namespace, specs: list[SiteSpec], hoinghi: dict) -> dict:
    """Run the same sites against Janus; returns the figures for result['janus']."""
    from .rehearse import proc_cpu_s, proc_rss_mb

    port = args.janus_port or _free_port()
    loop = asyncio.get_running_loop()
    try:
        pid = await loop.run_in_executor(None, lambda: start_janus(port, 1, None))
    except Exception as exc:  # Janus missing or failing: the hoinghi report still stands
        return {"error": f"Janus did not start: {exc}"}
    print(f"janus: {len(specs)} sites against Janus VideoRoom (pid {pid}, port {port})", flush=True)
    talker_ids = choose_talkers(specs, getattr(args, "talkers", 0))  # the same sites as hoinghi's run
    media = make_media(args.media, audio=not args.no_audio, talker_ids=talker_ids)
    slots = {s["site_id"]: (s.get("video_slots") or 9, s.get("audio_slots") or 3) for s in hoinghi.get("sites", [])}
    sites: list[JanusSite] = []
    ticker = FeedbackTicker([], twcc_interval=0.1)
    stalls = StallWatch()
    notes: list[str] = []
    out: dict[str, Any] = {"pid": pid, "port": port, "event_loops": 1}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as http:
        session = JanusSession(http, f"http://127.0.0.1:{port}/janus")
        try:
            await session.create()
            media.start()
            ticker.start()
            stalls.start()
            t0 = time.monotonic()
            for i, spec in enumerate(specs):
                site = JanusSite(spec, session, media, args.queue_ms, args.seed + 1000 + i,
                                 dtx=getattr(args, "janus_dtx", "on") == "on")
                sites.append(site)
            # publishers first, at the join rate
            tasks = []
            for site in sites:
                tasks.append(asyncio.ensure_future(site.publish()))
                await asyncio.sleep(1.0 / args.join_rate)
            done = await asyncio.gather(*tasks, return_exceptions=True)
            for site, res in zip(sites, done):
                if isinstance(res, BaseException):
                    site.error = f"publish: {type(res).__name__}: {res}"[:200]
            live = [s for s in sites if s.error is None and s.pub.feed_id is not None]
            order = [s for s in live if s.spec.role == "hub"] + [s for s in live if s.spec.role != "hub"]
            simulcast = bool(getattr(media, "simulcast", False))
            sub_tasks = []
            for site in live:
                nv, na = slots.get(site.spec.site_id, (9, 3))
                others = [o for o in order if o is not site]
                streams, subs = [], {}
                for k, o in enumerate(others[:nv]):
                    m = o.mids()
                    if "video" in m:
                        streams.append({"feed": o.pub.feed_id, "mid": m["video"]})
                        if simulcast:
                            top = len(media.rids) - 1
                            subs[(o.pub.feed_id, m["video"])] = janus_substream(top if k == 0 else 0, top)
                for o in others[:na]:
                    m = o.mids()
                    if "audio" in m:
                        streams.append({"feed": o.pub.feed_id, "mid": m["audio"]})
                if not streams:
                    continue
                sub_tasks.append(asyncio.ensure_future(site.subscribe(session, streams, subs)))
                await asyncio.sleep(1.0 / args.join_rate)
            done = await asyncio.gather(*sub_tasks, return_exceptions=True)
            for res in done:
                if isinstance(res, BaseException):
                    notes.append(f"subscribe: {type(res).__name__}: {res}"[:200])
            for site in live:
                if site.sub is not None:
                    ticker.peers.append(site.sub)
                    notes += site.sub.notes
            out["join_s"] = round(time.monotonic() - t0, 2)
            await asyncio.sleep(1.0)
            await asyncio.gather(*(s.sub.configure() for s in live if s.sub is not None), return_exceptions=True)
            # Janus switches a subscriber up at a keyframe of the target layer; make sure one
            # comes on every layer now rather than at the next one of the encoded loop
            for s in live:
                src = getattr(s.pub, "simulcast_source", None)
                for layer in getattr(src, "layers", []):
                    src.request_keyframe(layer.ssrc)
            await asyncio.sleep(args.settle)
            # the window
            c0, ta = proc_cpu_s(pid), time.monotonic()
            a0 = [s.arrived() for s in sites]
            seq0 = [s.receiver.snapshot() for s in sites]
            b0 = [s.receiver.bytes for s in sites]
            f0 = [sum(t.freezes for t in s.receiver.tracks.values() if t.video) for s in sites]
            rss = []
            end = time.monotonic() + args.seconds
            while time.monotonic() < end:
                await asyncio.sleep(min(1.0, max(0.0, end - time.monotonic())))
                r = proc_rss_mb(pid)
                if r is not None:
                    rss.append(r)
            c1, tb = proc_cpu_s(pid), time.monotonic()
            dt = tb - ta
            forwarded = sum(s.arrived() - a for s, a in zip(sites, a0))
            exp = got = 0
            per_site = []
            for s, before, by0, fz0 in zip(sites, seq0, b0, f0):
                e, g = window_loss(before, s.receiver)
                exp += e
                got += g
                fz = sum(t.freezes for t in s.receiver.tracks.values() if t.video) - fz0
                fg = sum(1 for t in s.receiver.tracks.values() if t.video for a, gap in t.freeze_at
                         if a >= ta and stalls.covers(a, gap))
                per_site.append({"site_id": s.spec.site_id, "name": s.spec.name, "error": s.error,
                                 "loss_pct": round(100.0 * (e - g) / e, 3) if e else None,
                                 "rx_kbps": round((s.receiver.bytes - by0) * 8 / dt / 1000, 1), "freezes": fz,
                                 "freezes_generator": fg})
            cpu = (c1 - c0) if (c0 is not None and c1 is not None) else None
            out.update({
                "sites": len(specs), "publishing": len(live), "subscribed": sum(1 for s in live if s.sub is not None),
                "seconds": round(dt, 2), "cpu_s": _r(cpu, 3), "cpu_pct_mean": _r(100 * cpu / dt, 1) if cpu is not None else None,
                "forwarded": forwarded, "forwarded_per_s": round(forwarded / dt, 1),
                "us_per_forwarded_packet": round(1e6 * cpu / forwarded, 2) if cpu and forwarded else None,
                "loss_pct": round(100.0 * (exp - got) / exp, 3) if exp else None,
                "rx_kbps": round(sum(x["rx_kbps"] for x in per_site), 1),
                "freezes": sum(x["freezes"] for x in per_site),
                "freezes_generator": sum(x["freezes_generator"] for x in per_site),
                "generator_stalls": sum(1 for end, _ in stalls.stalls if end >= ta), "rss_mb_max": round(max(rss), 1) if rss else None,
                "per_site": per_site, "media": media.describe(),
                "note": "forwarded = packets that reached the sites plus those their shaped links dropped; "
                        "Janus has no downlink estimate, so narrow links lose what does not fit",
            })
            if notes:
                out["notes"] = notes[:20]
        finally:
            await media.stop()
            await ticker.stop()
            await stalls.stop()
            await asyncio.gather(*(s.close() for s in sites), return_exceptions=True)
            await session.destroy()
            await loop.run_in_executor(None, stop_janus, pid)
    return out


def janus_substream(layer: int, top: int) -> int:
    """Janus's substream number for our layer (0 = lowest, q).

    Measured here with Janus 1.1.2 and a browser-like offer (`a=simulcast:send q;h;f`, lowest
    first): asking a subscriber for substream 2 delivered the q layer and substream 0 the f
    layer, i.e. Janus numbers the rids from the other end.
    """
    return top - layer


def _r(v: Optional[float], nd: int) -> Optional[float]:
    return None if v is None else round(v, nd)


def comparison_lines(result: dict) -> list[str]:
    j = result.get("janus") or {}
    if j.get("error"):
        return [f"Janus comparison: {j['error']}"]
    h = result["server"]
    t = result["totals"]
    rows = [
        ("", "hoinghi", "Janus"),
        ("CPU us / forwarded packet", h.get("us_per_forwarded_packet_sites"), j.get("us_per_forwarded_packet")),
        ("forwarded packets/s", h.get("forwarded_at_sites_per_s"), j.get("forwarded_per_s")),
        ("server CPU % (mean)", h.get("cpu_pct_mean"), j.get("cpu_pct_mean")),
        ("loss %", t.get("loss_pct"), j.get("loss_pct")),
        ("freezes (all)", t.get("freezes"), j.get("freezes")),
        ("  of which generator stalls", t.get("freezes_generator"), j.get("freezes_generator")),
        ("received kbit/s (all sites)", t.get("rx_kbps"), j.get("rx_kbps")),
    ]
    out = ["Side by side (same sites, links and media):"]
    for name, a, b in rows:
        out.append(f"  {name:<30} {_fmt(a):>12} {_fmt(b):>12}")
    return out


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.2f}"
    return str(v)
