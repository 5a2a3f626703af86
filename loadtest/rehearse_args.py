"""`hoinghi rehearse` options, apart from the tool so the CLI parser imports nothing heavy."""

from __future__ import annotations

import argparse
from pathlib import Path

from .linkprofile import DEFAULT_MIX, PRESETS

SAMPLE_REGISTRY = Path(__file__).resolve().parents[1] / "server" / "data" / "sites-sample.csv"
FEEDBACK_MODES = ("twcc", "remb", "rr", "none")  # as loadtest.rawpeer.FEEDBACK_MODES


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help="server to rehearse against (default: start one here with a temp SQLite)")
    p.add_argument("--secret", type=Path, help="the server's secret file (data dir/secret.key): tokens are minted here")
    p.add_argument("--admin-token", help="a hub/operator join token: tokens come from the server's /api/.../links")
    p.add_argument("--meeting", default="demo", help="meeting id (default demo)")
    p.add_argument("--server", choices=("subprocess", "inprocess"), default="subprocess",
                   help="without --url: run the server as its own process (default; its CPU is measured) or in this one")
    p.add_argument("--workers", type=int, default=None,
                   help="media worker processes of a server started here (default: the server's own default "
                        "for a subprocess, 0 in-process so its counters are exact)")
    p.add_argument("--server-pid", type=int, help="with --url on this machine: read CPU/memory from /proc of this PID")
    p.add_argument("--processes", type=int, default=1,
                   help="spread the sites over this many generator processes (one core each: for 50+ sites)")
    p.add_argument("--generator-nice", type=int, default=0, metavar="N",
                   help="run the generator processes at this niceness (e.g. 10), so that a server on the same "
                        "machine gets the CPU first, as it would on its own machine; starved generators then "
                        "show up as stalls and late feedback, not as server loss")
    p.add_argument("--sites", type=int, default=10, help="number of sites (the hub first, then the registry's order)")
    p.add_argument("--seconds", type=float, default=20.0, help="how long the meeting runs once everyone joined")
    p.add_argument("--join-rate", type=float, default=5.0, help="sites joining per second")
    p.add_argument("--join-timeout", type=float, default=30.0)
    p.add_argument("--settle", type=float, default=3.0, help="seconds after the joins before the measured window")
    p.add_argument("--registry", type=Path, default=SAMPLE_REGISTRY, help="site registry CSV (id,name,level,parent_id)")
    p.add_argument("--profiles", type=Path, help="CSV of per-site links: site_id,profile,down_kbps,up_kbps,delay_ms,loss_pct")
    p.add_argument("--mix", default=DEFAULT_MIX,
                   help=f"link profiles dealt to the sites, name:weight (presets: {', '.join(PRESETS)}); the hub gets lan")
    p.add_argument("--queue-ms", type=float, default=200.0,
                   help="shaped links queue this much data (ms at the link rate) before dropping, like tc tbf latency")
    p.add_argument("--media", default="auto", choices=("auto", "preencoded", "synthetic"),
                   help="auto: pre-encoded simulcast (loadtest.media_source) if present, else synthetic single layer")
    p.add_argument("--no-audio", action="store_true")
    p.add_argument("--janus-dtx", choices=("on", "off"), default="on",
                   help="Opus DTX for the sites sent to Janus (--compare-janus). hoinghi asks every "
                        "browser for DTX (opus_dtx, on by default) and its sites follow its answer; "
                        "Janus's room 1234 does not ask, so 'on' sends Janus the same packets")
    p.add_argument("--talkers", type=int, default=0, help="pre-encoded media: sites besides the hub that talk all the time")
    p.add_argument("--measure", type=int, default=2,
                   help="pre-encoded media: this many sites also decode the floor's video and read its stamps "
                        "(glass-to-glass latency, frozen and skipped frames as a viewer sees them; 0 = none)")
    p.add_argument("--decrypt-every", type=int, default=0,
                   help="light path: sites decrypt 1 RTP packet in K and count the rest from their clear headers "
                        "(0 = auto: 8 with pre-encoded media, whose payload nobody reads; 1 with synthetic, whose "
                        "send stamps are read)")
    p.add_argument("--feedback", choices=FEEDBACK_MODES, default="twcc")
    p.add_argument("--out", type=Path, default=Path("rehearsal"), help="output directory (JSON + HTML)")
    p.add_argument("--lang", choices=("vi", "en"), default="vi", help="language of the report")
    p.add_argument("--progress", type=float, default=2.0, help="seconds between progress lines")
    p.add_argument("--sample", type=float, default=1.0, help="seconds between samples")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--compare-janus", action="store_true",
                   help="then run the same sites against Janus VideoRoom (shared/janus/start-janus.sh) and compare")
    p.add_argument("--janus-port", type=int, default=8088)
    p.add_argument("--keep-server", action="store_true", help="keep the temp data dir of a server started here")
