"""Benchmark: per-receiver congestion control against capped downlinks.

A headless Chromium site publishes simulcast (q/h/f from its 1280x720 fake camera) to a
hoinghi server started in its own process. For each cap, a synthetic receiver (real
ICE/DTLS/SRTP, decodes, transport-cc feedback like a browser) joins uncapped, reaches the
top layer, then its downlink is capped like `tc tbf` (in-process token bucket, 100 ms
queue). Measured, per cap:
- time to adapt down: from the cap until every decoded frame is of the layer kept (the
  picture), and until what the server offers fits under the cap in every 0.5 s (the rate);
- utilisation: delivered bit rate / min(cap, what the top layer needs), loss after
  retransmission, freezes (gaps > 500 ms between decoded frames), layer switches per minute,
  over a steady window;
- time to climb back: from lifting the cap until 1280x720 frames are decoded again.

With `--thumbnails N` the meeting is a realistic one: N more sites join after the Chromium
site, so the receiver shows the Chromium site on the stage (slot 0) and the others as
thumbnails. They are the rehearsal's synthetic sites (loadtest/rawpeer.py): real ICE/DTLS/
SRTP, browser-style simulcast of pre-encoded VP8 (q 180p ~150, h 360p ~500, f 720p ~1500
kbit/s at 20 fps, each layer L1T3 as Chrome sends it, so a thumbnail can also be forwarded
at 5 or 10 fps; paused by the server's publish_layers like a browser's), muted, as most
sites of a meeting are. Encoded once, so N thumbnails cost this 2-core machine next to
nothing (live encoders starved the receiver under test). Utilisation is then the receiver's
whole downlink (stage + thumbnails + audio) over the cap, which is what a site's link is
for; layer, freezes and switches are the stage's.

    .venv/bin/python -m loadtest.bench_congestion --caps 300,800,2000,5000 --steady 30 --thumbnails 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp

from loadtest.peer import SyntheticSite
from loadtest.shaper import LinkImpairment

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_ARGS = [
    "--no-sandbox", "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection", "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--autoplay-policy=no-user-gesture-required", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
TOP = (1280, 720)


class Meter:
    """Watches one receiver: decoded frames (size, time) and bytes offered to / passed by its link."""

    def __init__(self, site: SyntheticSite, link: LinkImpairment) -> None:
        self.site = site
        self.link = link
        self.offered: list[tuple[float, int]] = []
        self.delivered: list[tuple[float, int]] = []
        self._wrap_link()

    def _wrap_link(self) -> None:
        pc = self.site.pc
        ice = pc.getTransceivers()[0].receiver.transport.transport._connection
        inner = ice.data_received  # the impairment's wrapper (outermost)

        def offered(data: bytes, component: int) -> None:
            now = time.monotonic()
            self.offered.append((now, len(data) + 28))
            inner(data, component)

        ice.data_received = offered

    def rate(self, series: list[tuple[float, int]], t0: float, t1: float) -> float:
        total = sum(n for t, n in series if t0 <= t < t1)
        return total * 8 / max(1e-6, t1 - t0)


async def _frames_watch(site: SyntheticSite, pub_id: str, out: list, stop: asyncio.Event) -> None:
    """Point `out` at the decoded-frame log (arrival, size) of the publisher's slot."""
    while not stop.is_set():
        track = site.track_for(pub_id)
        if track is not None:
            track.log = out
            return
        await asyncio.sleep(0.05)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def run(caps_kbps: list[int], steady_s: float, json_path: str | None, thumbnails: int = 0, camera: str = "pattern") -> list[dict]:
    from playwright.async_api import async_playwright

    from server.auth import TokenService

    data = Path(tempfile.mkdtemp(prefix="hoinghi-bench-"))
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--data-dir", str(data), "--announce-ip", "127.0.0.1"],
        cwd=ROOT, stdout=open(data / "server.log", "w"), stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(url + "/healthz", timeout=1)
            break
        except OSError:
            time.sleep(0.2)
    tokens = TokenService(data / "secret.key")
    results = []
    http = aiohttp.ClientSession()
    try:
        async with async_playwright() as pw:
            args = list(CHROMIUM_ARGS)
            if camera == "textured":
                from loadtest.camera_file import textured_y4m

                args.append(f"--use-file-for-fake-video-capture={textured_y4m()}")
            browser = await pw.chromium.launch(executable_path="/usr/bin/chromium", args=args)
            page = await browser.new_page()
            await page.goto(f"{url}/site#t={tokens.issue('demo', 'xa-cam', 'site', 3600)}")
            await page.wait_for_function("() => window.hoinghi && window.hoinghi.state === 'connected'", timeout=30000)
            others = await _thumbnail_sites(http, url, tokens, thumbnails)
            for cap in caps_kbps:
                results.append(await _one_cap(url, tokens, cap * 1000, steady_s))
                r = results[-1]
                print(
                    f"cap {cap:>5} kbit/s: down {r['adapt_down_s']} s (rate {r['rate_down_s']} s), utilisation {r['utilisation']} (of usable {r['utilisation_of_usable']}), "
                    f"loss {r['loss_pct']} % (all video {r['loss_all_video_pct']} %), freezes {r['freezes']} ({r['freeze_ms']} ms), "
                    f"switches/min {r['switches_per_min']}, climb back {r['climb_back_s']} s, layer {r['steady_size']} "
                    f"at {r['fps']} fps, thumbnails {r['thumbnail_fps']} fps",
                    flush=True,
                )
            for other in others:
                await other.close()
            await browser.close()
    finally:
        await http.close()
        server.terminate()
        server.wait(10)
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=2))
    return results


async def _thumbnail_sites(http: aiohttp.ClientSession, url: str, tokens, n: int) -> list:
    """N publishing sites of pre-encoded simulcast (publishers only: they take no slots)."""
    if not n:
        return []
    from loadtest.media_sender import MediaPacer
    from loadtest.media_source import SyntheticMedia, TalkSchedule
    from loadtest.rawpeer import HoinghiSite

    media = SyntheticMedia.load()  # encoded once per machine, then cached on disk
    pacer = MediaPacer.shared()
    sites = []
    for i in range(n):
        # muted: the speaker ranking must not move them onto the stage ahead of the Chromium site
        site = HoinghiSite(http, url, tokens.issue("demo", f"thumb-{i}", "site", 3600), f"thumb-{i}",
                           media=media, simulcast=True, publish_audio=False, talk=TalkSchedule.silent(),
                           video_slots=0, audio_slots=0, seed=i)
        await site.join()
        await site.negotiate()
        await site.wait_connected()
        await site.start_media(pacer)
        sites.append(site)
    return sites


async def _one_cap(url: str, tokens, cap: float, steady_s: float) -> dict:
    link = LinkImpairment()
    site = SyntheticSite(url, tokens.issue("demo", f"rx-{int(cap)}", "site", 3600), publish_video=False,
                         publish_audio=False, impairment=link)
    await site.join()
    await site.start_media()
    meter = Meter(site, link)
    pub_id = next(p["id"] for p in site.participants.values() if p["site_id"] == "xa-cam")
    frames: list = []
    stop = asyncio.Event()
    watcher = asyncio.ensure_future(_frames_watch(site, pub_id, frames, stop))
    try:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and not (frames and frames[-1][1] == TOP):
            await asyncio.sleep(0.2)
        await asyncio.sleep(3)  # let the top layer settle
        top_rate = meter.rate(meter.offered, time.monotonic() - 3, time.monotonic())
        # apply the cap; "adapted" = the offered rate over 0.5 s fits under the cap
        t_cap = time.monotonic()
        link.downstream_bps = cap
        # steady window: settle 5 s, then measure
        await asyncio.sleep(5)
        mid = site.slot_of(pub_id)["mid"]
        e0, r0 = site.media_loss(mid)
        mids = [slot["mid"] for slot in site.slots.get("video", []) if slot.get("participant_id")]
        all0 = [site.media_loss(m) for m in mids]
        p0, q0, b0 = link.passed_down, link.dropped_queue, link.passed_bytes
        t0 = time.monotonic()
        f0 = len(frames)
        thumbs0 = {p["id"]: (site.track_for(p["id"]).frames if site.track_for(p["id"]) else 0)
                   for p in site.participants.values() if p["site_id"].startswith("thumb-")}
        await asyncio.sleep(steady_s)
        t1 = time.monotonic()
        thumb_fps = [
            round(((site.track_for(pid).frames if site.track_for(pid) else 0) - n0) / (t1 - t0), 1) for pid, n0 in thumbs0.items()
        ]
        e1, r1 = site.media_loss(mid)
        all1 = [site.media_loss(m) for m in mids]
        all_expected = sum(b[0] - a[0] for a, b in zip(all0, all1))
        all_received = sum(b[1] - a[1] for a, b in zip(all0, all1))
        window = frames[f0:]
        gaps = [b[0] - a[0] for a, b in zip(window, window[1:])]
        freezes = [g for g in gaps if g > 0.5]
        switches = sum(1 for a, b in zip(window, window[1:]) if a[1] != b[1])
        offered = meter.rate(meter.offered, t0, t1)
        delivered = (link.passed_bytes - b0) * 8 / (t1 - t0)
        queue_drops = link.dropped_queue - q0
        passed = link.passed_down - p0
        usable = min(cap, top_rate) if top_rate else cap  # a 5 Mbit/s cap is more than the media needs
        sizes = [s for _, s in window]
        steady_size = statistics.mode(sizes) if sizes else None
        # adapted = from when on every decoded frame is of the steady layer
        after_cap = [(t, s) for t, s in frames if t >= t_cap]
        last_other = max((t for t, s in after_cap if t < t0 and s != steady_size), default=None)
        adapt = (last_other - t_cap if last_other is not None else 0.0) if steady_size else None
        # rate adapted = from when on every 0.5 s the server offers the link no more than the cap
        # (what the link sees; the picture may still show the old layer, thinned to its base
        # temporal layer, until the new layer's keyframe)
        rate_down = 0.0
        w = t_cap
        while w + 0.5 <= t0:
            if meter.rate(meter.offered, w, w + 0.5) > cap:
                rate_down = w + 0.5 - t_cap
            w += 0.5
        # lift the cap: time until the top layer is decoded again
        t_lift = time.monotonic()
        link.downstream_bps = None
        climb = None
        n_lift = len(frames)
        while time.monotonic() - t_lift < 30:
            await asyncio.sleep(0.1)
            if any(s == TOP for _, s in frames[n_lift:]):
                climb = time.monotonic() - t_lift
                break
        return {
            "cap_kbps": cap / 1000,
            "adapt_down_s": round(adapt, 2) if adapt is not None else None,
            "rate_down_s": round(rate_down, 2),
            "offered_kbps": round(offered / 1000),
            "top_layer_kbps": round(top_rate / 1000),
            "utilisation": round(delivered / cap, 2),
            "utilisation_of_usable": round(delivered / usable, 2),
            "loss_pct": round(100 * (1 - (r1 - r0) / max(1, e1 - e0)), 2),
            "loss_all_video_pct": round(100 * (1 - all_received / max(1, all_expected)), 2),
            "queue_drop_pct": round(100 * queue_drops / max(1, queue_drops + passed), 2),
            "freezes": len(freezes),
            "freeze_ms": round(sum(freezes) * 1000),
            "switches_per_min": round(switches * 60 / max(1e-6, t1 - t0), 2),
            "steady_size": steady_size,
            "fps": round(len(window) / max(1e-6, t1 - t0), 1),
            "climb_back_s": round(climb, 2) if climb is not None else None,
            "thumbnail_fps": thumb_fps,
            # when, in the steady window (s from its start, wall clock), for reading next to the
            # server's debug log: each stage switch (from size, to size) and each freeze (gap s)
            "switch_at": [(round(b[0] - t0, 2), a[1], b[1]) for a, b in zip(window, window[1:]) if a[1] != b[1]],
            "freeze_at": [(round(a[0] - t0, 2), round(b[0] - a[0], 2)) for a, b in zip(window, window[1:]) if b[0] - a[0] > 0.5],
            "window_start": time.strftime("%H:%M:%S", time.localtime(time.time() - (time.monotonic() - t0))),
        }
    finally:
        stop.set()
        watcher.cancel()
        await site.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--caps", default="300,800,2000,5000", help="downlink caps in kbit/s")
    ap.add_argument("--steady", type=float, default=30.0, help="seconds of steady measurement per cap")
    ap.add_argument("--json", help="write results here")
    ap.add_argument("--thumbnails", type=int, default=0, help="more publishing sites (synthetic), seen as thumbnails")
    ap.add_argument("--camera", choices=("pattern", "textured"), default="pattern",
                    help="Chromium's built-in test pattern (encodes far below the layers' rates), or a "
                         "textured moving Y4M (loadtest/camera_file.py) that fills them as a real camera does")
    args = ap.parse_args()
    caps = [int(c) for c in args.caps.split(",")]
    print(f"machine: {os.cpu_count()} cores; python {sys.version.split()[0]}", flush=True)
    print(f"load average at start: {os.getloadavg()[0]:.2f}", flush=True)
    print(f"camera: {args.camera}", flush=True)
    asyncio.run(run(caps, args.steady, args.json, args.thumbnails, args.camera))


if __name__ == "__main__":
    main()
