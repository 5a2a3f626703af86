"""Link profiles and site plans for rehearsals: which sites, behind which links.

Kept free of aiortc/aiohttp imports so `hoinghi --help` and argument parsing stay fast.
"""

from __future__ import annotations

import csv
import hashlib
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional


# --------------------------------------------------------------------------- link profiles


@dataclass(frozen=True)
class LinkProfile:
    """The link one site sits behind. None = not limited. delay_ms is one way, each way."""

    name: str
    down_kbps: Optional[float] = None
    up_kbps: Optional[float] = None
    delay_ms: float = 0.0
    loss_pct: float = 0.0

    @property
    def shaped(self) -> bool:
        return bool(self.down_kbps or self.up_kbps or self.delay_ms or self.loss_pct)

    def describe(self) -> str:
        parts = [self.name]
        if self.down_kbps:
            parts.append(f"↓{_kbps(self.down_kbps)}")
        if self.up_kbps:
            parts.append(f"↑{_kbps(self.up_kbps)}")
        if self.delay_ms:
            parts.append(f"{self.delay_ms:g} ms")
        if self.loss_pct:
            parts.append(f"{self.loss_pct:g}% loss")
        return " ".join(parts)

    def as_dict(self) -> dict:
        return asdict(self)


def _kbps(v: float) -> str:
    return f"{v / 1000:g} Mbit/s" if v >= 1000 else f"{v:g} kbit/s"


#: Typical links of a province's sites (figures a technician would quote, not measured here).
PRESETS: dict[str, LinkProfile] = {
    "lan": LinkProfile("lan"),
    "fiber": LinkProfile("fiber", down_kbps=20000, up_kbps=10000, delay_ms=5, loss_pct=0.0),
    "adsl": LinkProfile("adsl", down_kbps=4000, up_kbps=1000, delay_ms=20, loss_pct=0.2),
    "4g": LinkProfile("4g", down_kbps=3000, up_kbps=1500, delay_ms=40, loss_pct=1.0),
    "3g": LinkProfile("3g", down_kbps=800, up_kbps=400, delay_ms=80, loss_pct=2.0),
    "weak": LinkProfile("weak", down_kbps=300, up_kbps=250, delay_ms=150, loss_pct=4.0),
}

DEFAULT_MIX = "fiber:70,adsl:20,4g:7,3g:3"


def parse_mix(spec: str) -> list[tuple[LinkProfile, float]]:
    """`fiber:70,adsl:20,3g:10` -> [(profile, weight)]; a bare name means weight 1."""
    out = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        name, _, weight = part.partition(":")
        if name not in PRESETS:
            raise ValueError(f"unknown link profile {name!r} (known: {', '.join(PRESETS)})")
        out.append((PRESETS[name], float(weight or 1)))
    if not out or sum(w for _, w in out) <= 0:
        raise ValueError(f"empty link profile mix {spec!r}")
    return out


def assign_mix(site_ids: list[str], mix: list[tuple[LinkProfile, float]], hub: Optional[str] = None,
               hub_profile: LinkProfile = PRESETS["lan"]) -> dict[str, LinkProfile]:
    """Deal profiles out in proportion to their weights, in a stable order.

    The order is by a hash of the site id, so the same site gets the same link in every
    run and in every N (a 20-site run is a prefix of the 164-site one's assignment pattern).
    """
    others = [s for s in site_ids if s != hub]
    ranked = sorted(others, key=lambda s: hashlib.sha1(s.encode()).hexdigest())
    total = sum(w for _, w in mix)
    counts = [int(round(w / total * len(ranked))) for _, w in mix]
    while sum(counts) > len(ranked):
        counts[counts.index(max(counts))] -= 1
    while sum(counts) < len(ranked):
        counts[0] += 1
    out: dict[str, LinkProfile] = {}
    if hub is not None and hub in site_ids:
        out[hub] = hub_profile
    # weakest profiles first in hash order, so small runs still contain some of them
    order = sorted(range(len(mix)), key=lambda i: mix[i][0].down_kbps or 1e12)
    i = 0
    for k in order:
        for _ in range(counts[k]):
            out[ranked[i]] = mix[k][0]
            i += 1
    return out


_NUM = re.compile(r"^\s*([0-9.]+)\s*$")


def _opt_float(value: Optional[str]) -> Optional[float]:
    if value is None or not value.strip():
        return None
    m = _NUM.match(value)
    if not m:
        raise ValueError(f"not a number: {value!r}")
    return float(m.group(1))


def read_profiles_csv(path: Path) -> dict[str, LinkProfile]:
    """site_id[,profile][,down_kbps,up_kbps,delay_ms,loss_pct] per row; numbers override the preset."""
    out: dict[str, LinkProfile] = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        for row in csv.DictReader(f):
            sid = (row.get("site_id") or row.get("id") or "").strip()
            if not sid:
                continue
            base = PRESETS.get((row.get("profile") or "").strip(), None)
            name = base.name if base else "custom"
            down = _opt_float(row.get("down_kbps"))
            up = _opt_float(row.get("up_kbps"))
            delay = _opt_float(row.get("delay_ms"))
            loss = _opt_float(row.get("loss_pct"))
            out[sid] = LinkProfile(
                name,
                down if down is not None else (base.down_kbps if base else None),
                up if up is not None else (base.up_kbps if base else None),
                delay if delay is not None else (base.delay_ms if base else 0.0),
                loss if loss is not None else (base.loss_pct if base else 0.0),
            )
    return out


@dataclass(frozen=True)
class SiteSpec:
    site_id: str
    name: str
    role: str  # hub | site
    level: str
    profile: LinkProfile


def read_registry(path: Path) -> list[tuple[str, str, str]]:
    """(id, name, level) rows of a site registry CSV (id,name,level,parent_id)."""
    rows = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        for row in csv.DictReader(f):
            sid = (row.get("id") or row.get("site_id") or "").strip()
            if sid:
                rows.append((sid, (row.get("name") or sid).strip(), (row.get("level") or "commune").strip()))
    return rows


def plan_sites(registry: list[tuple[str, str, str]], n: int, profiles: dict[str, LinkProfile] | None = None,
               mix: str = DEFAULT_MIX) -> list[SiteSpec]:
    """The first n registry sites, the hub (level province) first, each with its link."""
    if n > len(registry):
        # more sites than the registry has: numbered extras, like a province that grew
        registry = registry + [(f"site-{i:03d}", f"Điểm cầu {i:03d}", "commune") for i in range(len(registry), n)]
    hubs = [r for r in registry if r[2] == "province"]
    rest = [r for r in registry if r[2] != "province"]
    chosen = (hubs[:1] + rest)[:n]
    hub = chosen[0][0] if chosen and chosen[0][2] == "province" else None
    ids = [r[0] for r in chosen]
    dealt = assign_mix(ids, parse_mix(mix), hub=hub)
    if profiles:
        dealt.update({k: v for k, v in profiles.items() if k in dealt})
    return [SiteSpec(sid, name, "hub" if sid == hub else "site", level, dealt[sid]) for sid, name, level in chosen]
