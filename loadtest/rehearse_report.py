"""The rehearsal's HTML report: one self-contained file, plots as inline SVG (no JS, no CDN).

Everything comes from the result dict that is also written as rehearsal.json, so the page
and the JSON never disagree. Labels are Vietnamese by default, English with --lang en.
"""

from __future__ import annotations

import html
import math
from typing import Any, Optional, Sequence

L = {
    "vi": {
        "title": "Diễn tập hội nghị", "summary": "Tóm tắt", "sites": "điểm cầu", "joined": "đã vào",
        "failed": "lỗi", "loss": "mất gói", "freezes": "đứng hình", "join_p50": "thời gian vào (trung vị)",
        "first_media": "có hình/tiếng đầu tiên (trung vị)", "server_cpu": "CPU máy chủ", "server_mem": "bộ nhớ máy chủ",
        "hub_uplink": "băng thông lên cần ở trung tâm", "mean": "trung bình", "peak": "đỉnh",
        "struggling": "Điểm cầu sẽ gặp khó khăn", "none_struggling": "Không điểm cầu nào gặp khó khăn.",
        "layer_timeline": "Lớp hình chính nhận được theo thời gian (mỗi hàng một điểm cầu)",
        "layer_legend": "xám: chưa có; đỏ: tạm dừng; cam: lớp 0 (thấp nhất); vàng: lớp 1; xanh: lớp 2 (cao nhất)",
        "bitrate": "Tốc độ nhận của từng điểm cầu (kbit/s)", "loss_chart": "Mất gói theo thời gian, từng điểm cầu (%)",
        "freeze_chart": "Số lần đứng hình mỗi điểm cầu (cửa sổ đo)", "cpu_chart": "CPU máy chủ (% một lõi)",
        "mem_chart": "Bộ nhớ máy chủ (MB)", "uplink_chart": "Băng thông lên cần ở trung tâm (Mbit/s, máy chủ gửi đi)",
        "joined_chart": "Điểm cầu đã vào / đang nhận hình", "time": "thời gian (s)", "table": "Từng điểm cầu",
        "col_site": "điểm cầu", "col_link": "đường truyền", "col_join": "vào (s)", "col_first": "hình đầu (s)",
        "col_rx": "nhận kbit/s", "col_stage": "hình chính kbit/s", "col_loss": "mất gói %", "col_freeze": "đứng hình",
        "col_layer": "lớp hình chính", "col_paused": "hình nhỏ tạm dừng", "col_jitter": "jitter ms",
        "config": "Cấu hình", "media": "Nguồn hình/tiếng", "server": "Máy chủ", "consistency": "Đối chiếu gói tin",
        "janus": "So sánh với Janus VideoRoom (cùng tải)", "us_pkt": "µs CPU / gói chuyển tiếp",
        "fwd": "gói chuyển tiếp/s", "steady": "cửa sổ đo (s)", "note": "ghi chú",
        "generator": "tiến trình các điểm cầu giả lập",
        "freezes_gen": "trong đó trùng lúc tiến trình giả lập bị nghẽn",
    },
    "en": {
        "title": "Conference rehearsal", "summary": "Summary", "sites": "sites", "joined": "joined",
        "failed": "failed", "loss": "loss", "freezes": "freezes", "join_p50": "join time (median)",
        "first_media": "first media (median)", "server_cpu": "server CPU", "server_mem": "server memory",
        "hub_uplink": "hub uplink needed", "mean": "mean", "peak": "peak",
        "struggling": "Sites that will struggle", "none_struggling": "No site is expected to struggle.",
        "layer_timeline": "Layer of the main video received over time (one row per site)",
        "layer_legend": "grey: nothing yet; red: paused; orange: layer 0 (lowest); yellow: layer 1; green: layer 2 (top)",
        "bitrate": "Received bitrate per site (kbit/s)", "loss_chart": "Loss over time per site (%)",
        "freeze_chart": "Freezes per site (measured window)", "cpu_chart": "Server CPU (% of one core)",
        "mem_chart": "Server memory (MB)", "uplink_chart": "Hub uplink needed (Mbit/s the server sends)",
        "joined_chart": "Sites joined / receiving media", "time": "time (s)", "table": "Per site",
        "col_site": "site", "col_link": "link", "col_join": "join (s)", "col_first": "first media (s)",
        "col_rx": "rx kbit/s", "col_stage": "main video kbit/s", "col_loss": "loss %", "col_freeze": "freezes",
        "col_layer": "main video layer", "col_paused": "paused thumbnails", "col_jitter": "jitter ms",
        "config": "Configuration", "media": "Media", "server": "Server", "consistency": "Packet accounting",
        "janus": "Compared with Janus VideoRoom (same load)", "us_pkt": "CPU µs / forwarded packet",
        "fwd": "forwarded packets/s", "steady": "measured window (s)", "note": "note",
        "generator": "synthetic sites' process",
        "freezes_gen": "of which during a stall of the generator",
    },
}

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
LAYER_COLORS = {None: "#d9d9d9", "paused": "#d62728", 0: "#fd8d3c", 1: "#f2d33f", 2: "#31a354"}


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _nice_max(v: float) -> float:
    if v <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if v <= m * exp:
            return m * exp
    return 10 * exp


def _x_ticks(xmax: float) -> list[float]:
    step = _nice_max(xmax / 6) if xmax > 0 else 1.0
    ticks, x = [], 0.0
    while x <= xmax + 1e-9:
        ticks.append(x)
        x += step
    return ticks


def line_chart(title: str, xs: Sequence[float], series: list[tuple[str, Sequence[Optional[float]], str, float]],
               xlabel: str, width: int = 880, height: int = 240, ymax: Optional[float] = None) -> str:
    """Lines (label, values, colour, stroke width) over a shared x axis; None leaves a gap."""
    left, right, top, bottom = 56, 12, 26, 34
    pw, ph = width - left - right, height - top - bottom
    vals = [v for _, ys, _, _ in series for v in ys if v is not None]
    ymax = ymax or _nice_max(max(vals) if vals else 1.0)
    xmax = max(xs) if xs else 1.0
    xmax = xmax or 1.0

    def px(x: float) -> float:
        return left + pw * x / xmax

    def py(y: float) -> float:
        return top + ph * (1 - min(y, ymax) / ymax)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">',
           f'<text x="{left}" y="16" font-size="13" font-weight="bold">{_e(title)}</text>',
           f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#ccc"/>']
    for i in range(5):
        y = ymax * i / 4
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{py(y):.1f}" y2="{py(y):.1f}" stroke="#e5e5e5"/>'
                   f'<text x="{left - 4}" y="{py(y) + 4:.1f}" font-size="10" text-anchor="end">{y:g}</text>')
    for x in _x_ticks(xmax):
        out.append(f'<text x="{px(x):.1f}" y="{top + ph + 14}" font-size="10" text-anchor="middle">{x:g}</text>')
    out.append(f'<text x="{left + pw / 2}" y="{height - 4}" font-size="10" text-anchor="middle">{_e(xlabel)}</text>')
    for label, ys, colour, w in series:
        pts: list[str] = []
        segs: list[str] = []
        for x, y in zip(xs, ys):
            if y is None:
                if len(pts) > 1:
                    segs.append(" ".join(pts))
                pts = []
                continue
            pts.append(f"{px(x):.1f},{py(y):.1f}")
        if len(pts) > 1:
            segs.append(" ".join(pts))
        for s in segs:
            out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="{w}" points="{s}"><title>{_e(label)}</title></polyline>')
    if len(series) <= 12:
        lx = left + 6
        for label, _, colour, _ in series:
            out.append(f'<rect x="{lx}" y="{top + 4}" width="10" height="3" fill="{colour}"/>'
                       f'<text x="{lx + 13}" y="{top + 9}" font-size="9">{_e(label[:24])}</text>')
            lx += 14 + 6 * min(24, len(label))
    out.append("</svg>")
    return "".join(out)


def layer_strips(title: str, legend: str, xs: Sequence[float], rows: list[tuple[str, list, list]], xlabel: str,
                 width: int = 880) -> str:
    """One strip per site: colour = the stage slot's layer at each sample (paused red)."""
    left, right, top = 190, 12, 26
    row_h = 12 if len(rows) <= 40 else 6
    ph = row_h * len(rows)
    height = top + ph + 48
    pw = width - left - right
    xmax = (max(xs) if xs else 1.0) or 1.0
    step = xs[1] - xs[0] if len(xs) > 1 else 1.0
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">',
           f'<text x="4" y="16" font-size="13" font-weight="bold">{_e(title)}</text>']
    for i, (name, layers, paused_flags) in enumerate(rows):
        y = top + i * row_h
        if row_h >= 10:
            out.append(f'<text x="{left - 4}" y="{y + row_h - 2}" font-size="9" text-anchor="end">{_e(name[:36])}</text>')
        # run-length encode to keep the SVG small for 164 sites x minutes (a generator
        # process may have sampled a tick more or less than the parent's timeline)
        n = min(len(layers), len(paused_flags), len(xs))
        layers, paused_flags = layers[:n], paused_flags[:n]
        j = 0
        while j < len(layers):
            key = "paused" if paused_flags[j] else layers[j]
            k = j
            while k + 1 < len(layers) and ("paused" if paused_flags[k + 1] else layers[k + 1]) == key:
                k += 1
            x0 = left + pw * max(0.0, xs[j] - step) / xmax
            x1 = left + pw * xs[k] / xmax
            colour = LAYER_COLORS.get(key, "#31a354")
            out.append(f'<rect x="{x0:.1f}" y="{y}" width="{max(0.5, x1 - x0):.1f}" height="{row_h - 1}" fill="{colour}">'
                       f'<title>{_e(name)}: {key}</title></rect>')
            j = k + 1
    for x in _x_ticks(xmax):
        out.append(f'<text x="{left + pw * x / xmax:.1f}" y="{top + ph + 12}" font-size="10" text-anchor="middle">{x:g}</text>')
    out.append(f'<text x="{left + pw / 2}" y="{top + ph + 26}" font-size="10" text-anchor="middle">{_e(xlabel)}</text>')
    out.append(f'<text x="4" y="{top + ph + 42}" font-size="10">{_e(legend)}</text></svg>')
    return "".join(out)


def bar_chart(title: str, labels: list[str], values: list[float], width: int = 880, colour: str = "#6baed6") -> str:
    left, top, bar_h = 190, 26, 12 if len(labels) <= 40 else 5
    height = top + bar_h * len(labels) + 10
    pw = width - left - 40
    vmax = _nice_max(max(values) if values else 1.0)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">',
           f'<text x="4" y="16" font-size="13" font-weight="bold">{_e(title)}</text>']
    for i, (lab, v) in enumerate(zip(labels, values)):
        y = top + i * bar_h
        w = pw * v / vmax
        if bar_h >= 10:
            out.append(f'<text x="{left - 4}" y="{y + bar_h - 2}" font-size="9" text-anchor="end">{_e(lab[:36])}</text>')
        out.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h - 1}" fill="{colour}"><title>{_e(lab)}: {v:g}</title></rect>')
        if bar_h >= 10 and v:
            out.append(f'<text x="{left + w + 3:.1f}" y="{y + bar_h - 2}" font-size="9">{v:g}</text>')
    out.append("</svg>")
    return "".join(out)


def _fmt(v: Any, nd: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def render_html(result: dict) -> str:
    lang = result.get("lang", "vi")
    t = L.get(lang, L["vi"])
    tl = result["timeline"]
    xs = tl["t"]
    sites = result["sites"]
    tot = result["totals"]
    sv = result["server"]
    parts: list[str] = [
        f'<!doctype html><html lang="{_e(lang)}"><head><meta charset="utf-8"><title>{_e(t["title"])}</title>',
        "<style>body{font-family:system-ui,sans-serif;margin:18px;max-width:940px;color:#222}"
        "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ddd;padding:2px 6px;text-align:right}"
        "td:first-child,th:first-child,td.l{text-align:left}.bad{background:#fde0dd}h2{margin-top:28px}"
        "li{margin:3px 0}code{font-size:11px}</style></head><body>",
        f"<h1>{_e(t['title'])}</h1><p><code>{_e(result.get('command', ''))}</code></p>",
        f"<h2>{_e(t['summary'])}</h2><table>",
    ]
    rows = [
        (t["sites"], f"{tot['joined']}/{tot['sites']} {t['joined']}" + (f", {tot['failed']} {t['failed']}" if tot["failed"] else "")),
        (t["steady"], _fmt(tot.get("steady_seconds"))),
        (t["loss"], f"{_fmt(tot.get('loss_pct'), 3)} %"),
        (t["freezes"], f"{_fmt(tot.get('freezes'))} ({t['freezes_gen']}: {_fmt(tot.get('freezes_generator'))})"),
        (t["join_p50"], f"{_fmt(tot.get('join_s_p50'), 2)} s (max {_fmt(tot.get('join_s_max'), 2)} s)"),
        (t["first_media"], f"{_fmt(tot.get('first_media_s_p50'), 2)} s (max {_fmt(tot.get('first_media_s_max'), 2)} s)"),
        (t["server_cpu"], f"{_fmt(sv.get('cpu_pct_mean'), 0)} % ({t['mean']})"),
        (t["server_mem"], f"{_fmt(sv.get('rss_mb_max'), 0)} MB ({t['peak']})"),
        (t["us_pkt"], _fmt(sv.get("us_per_forwarded_packet"), 2)),
        (t["fwd"], _fmt(sv.get("packets_out_per_s"), 0)),
        (t["hub_uplink"], f"{_fmt((sv.get('hub_uplink_kbps_mean') or 0) / 1000, 2)} Mbit/s ({t['mean']}), "
                          f"{_fmt((sv.get('hub_uplink_kbps_peak') or 0) / 1000, 2)} Mbit/s ({t['peak']})"),
    ]
    if sv.get("cpu_note"):
        rows.append((t["note"], sv["cpu_note"]))
    for w in result.get("warnings", []):
        rows.append((t["note"], w))
    parts += [f'<tr><td class="l">{_e(a)}</td><td class="l">{_e(b)}</td></tr>' for a, b in rows]
    parts.append("</table>")
    parts.append(f"<h2>{_e(t['struggling'])}</h2>")
    if result["struggling"]:
        parts.append("<ul>" + "".join(f"<li><b>{_e(s['name'])}</b>: {_e('; '.join(s['reasons']))}</li>" for s in result["struggling"]) + "</ul>")
    else:
        parts.append(f"<p>{_e(t['none_struggling'])}</p>")

    parts.append(layer_strips(
        t["layer_timeline"], t["layer_legend"], xs,
        [(s["name"], s["series"]["layer"], [bool(x) for x in s["series"].get("stage_paused") or [False] * len(s["series"]["layer"])])
         for s in sites],
        t["time"]))
    hub_first = [s for s in sites]
    parts.append(line_chart(t["bitrate"], xs, [(s["name"], s["series"]["rx_kbps"], PALETTE[i % len(PALETTE)],
                                                2.0 if s["role"] == "hub" else 1.0) for i, s in enumerate(hub_first)], t["time"]))
    parts.append(line_chart(t["loss_chart"], xs, [(s["name"], s["series"]["loss_pct"], PALETTE[i % len(PALETTE)], 1.0)
                                                  for i, s in enumerate(sites)], t["time"]))
    parts.append(bar_chart(t["freeze_chart"], [s["name"] for s in sites], [float((s["summary"] or {}).get("freezes") or 0) for s in sites]))
    parts.append(line_chart(t["joined_chart"], xs, [(t["joined"], tl["joined"], PALETTE[0], 2.0),
                                                    ("media", tl["flowing"], PALETTE[2], 1.5)], t["time"],
                            ymax=max(1, tot["sites"])))
    parts.append(line_chart(t["cpu_chart"], xs, [(t["server_cpu"], tl["server_cpu_pct"], PALETTE[3], 1.5),
                                                 (t["generator"], tl.get("generator_cpu_pct") or [], PALETTE[7], 1.0)], t["time"]))
    parts.append(line_chart(t["mem_chart"], xs, [(t["server_mem"], tl["server_rss_mb"], PALETTE[4], 1.5)], t["time"]))
    parts.append(line_chart(t["uplink_chart"], xs, [(t["hub_uplink"], [None if v is None else v / 1000 for v in tl["hub_uplink_kbps"]],
                                                     PALETTE[0], 1.5)], t["time"]))

    if result.get("janus"):
        parts.append(janus_table(result, t))

    parts.append(f"<h2>{_e(t['table'])}</h2><table><tr>")
    cols = ["col_site", "col_link", "col_join", "col_first", "col_rx", "col_stage", "col_loss", "col_freeze", "col_jitter",
            "col_layer", "col_paused"]
    parts.append("".join(f"<th>{_e(t[c])}</th>" for c in cols) + "</tr>")
    for s in sites:
        x = s["summary"] or {}
        share = x.get("stage_layer_share") or {}
        layer = " ".join(f"{k}:{int(100 * v)}%" for k, v in share.items()) or "–"
        cls = ' class="bad"' if s["struggles"] else ""
        parts.append(
            f"<tr{cls}><td>{_e(s['name'])}</td><td class=\"l\">{_e(s['link'])}</td><td>{_fmt(s['join_s'], 2)}</td>"
            f"<td>{_fmt(s['first_media_s'], 2)}</td><td>{_fmt(x.get('rx_kbps'), 0)}</td><td>{_fmt(x.get('stage_kbps'), 0)}</td>"
            f"<td>{_fmt(x.get('loss_pct'), 2)}</td><td>{_fmt(x.get('freezes'))}</td><td>{_fmt(x.get('jitter_ms'), 1)}</td>"
            f"<td>{_e(layer)}</td><td>{_fmt(x.get('paused_slots_mean'), 1)}</td></tr>")
    parts.append("</table>")
    parts.append(f"<h2>{_e(t['media'])}</h2><p><code>{_e(result.get('media'))}</code></p>")
    parts.append(f"<h2>{_e(t['consistency'])}</h2><p><code>{_e(result.get('consistency'))}</code></p>")
    cfg = {k: v for k, v in result.get("config", {}).items()}
    parts.append(f"<h2>{_e(t['config'])}</h2><p><code>{_e(cfg)}</code></p></body></html>")
    return "\n".join(parts)


def janus_table(result: dict, t: dict) -> str:
    j = result["janus"]
    h = result["server"]
    if j.get("error"):
        return f"<h2>{_e(t['janus'])}</h2><p>{_e(j['error'])}</p>"
    rows = [
        ("", "hoinghi", "Janus"),
        (t["us_pkt"], _fmt(h.get("us_per_forwarded_packet_sites"), 2), _fmt(j.get("us_per_forwarded_packet"), 2)),
        (t["fwd"], _fmt(h.get("forwarded_at_sites_per_s"), 0), _fmt(j.get("forwarded_per_s"), 0)),
        (t["server_cpu"] + " %", _fmt(h.get("cpu_pct_mean"), 0), _fmt(j.get("cpu_pct_mean"), 0)),
        (t["loss"] + " %", _fmt(result["totals"].get("loss_pct"), 3), _fmt(j.get("loss_pct"), 3)),
        (t["freezes"], _fmt(result["totals"].get("freezes")), _fmt(j.get("freezes"))),
        (t["freezes_gen"], _fmt(result["totals"].get("freezes_generator")), _fmt(j.get("freezes_generator"))),
        (t["col_rx"], _fmt(result["totals"].get("rx_kbps"), 0), _fmt(j.get("rx_kbps"), 0)),
    ]
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows)
    note = f"<p>{_e(j.get('note', ''))}</p>" if j.get("note") else ""
    return f"<h2>{_e(t['janus'])}</h2><table>{body}</table>{note}"
