// Camera, microphone and link check: used before joining (site page) and on its own
// (/check, /check#t=<link token>) so a site can test days before a big conference.
//
// Link figures: round-trip time, jitter and late/lost replies from ~20 WebSocket pings to
// the server's /ws (answered before any join); download and upload throughput from
// /api/check/download and /api/check/upload (size-capped, rate-limited on the server).
// Over TCP a lost packet shows up as a late reply, so "loss" here counts replies later than
// LATE_MS or missing: what a real-time call would have lost.

import { t, applyI18n, bindLangButtons, onLangChange, getLang } from "./i18n.js";
import { getLocalMedia, stopStream } from "./media.js";
import { readToken, decodeClaims, defaultWsUrl } from "./conference.js";
import { icon } from "./icons.js";

const PINGS = 20;
const PING_GAP_MS = 50;
const LATE_MS = 1000;
const SIZES = [64 * 1024, 256 * 1024, 1024 * 1024, 4 * 1024 * 1024];
const TARGET_MS = 700; // stop growing the transfer once one takes this long
const MIC_LISTEN_MS = 2500;
/** sessionStorage key: the last result, read by the site page's pre-join step. */
export const LAST_CHECK_KEY = "hoinghi.check";

/**
 * What each quality needs, in bit/s of measured TCP throughput (after 20 % headroom):
 * sending one's own camera, and receiving the large view plus thumbnails and sound.
 */
export const LEVELS = [
  { key: "hd", up: 1_800_000, down: 3_000_000 }, // 720p
  { key: "sd", up: 700_000, down: 1_200_000 }, // 360p
  { key: "low", up: 250_000, down: 450_000 }, // 180p + sound
  { key: "audio", up: 64_000, down: 100_000 }, // sound only
];
const ORDER = ["none", "audio", "low", "sd", "hd"];

function levelFor(bps, dir) {
  if (!(bps > 0)) return "none";
  for (const l of LEVELS) if (bps * 0.8 >= l[dir]) return l.key;
  return "none";
}

/** The verdict for measured figures; pure, so it can be tested on its own. */
export function verdict({ upBps, downBps, rttMs, loss }) {
  const send = levelFor(upBps, "up");
  const receive = levelFor(downBps, "down");
  let level = ORDER[Math.min(ORDER.indexOf(send), ORDER.indexOf(receive))];
  const warnings = [];
  if (rttMs != null && rttMs > 400) warnings.push("delay");
  if (loss != null && loss > 0.05) {
    warnings.push("unstable");
    if (level !== "none" && level !== "audio") level = ORDER[ORDER.indexOf(level) - 1];
  }
  return { level, send, receive, warnings };
}

function median(values) {
  const v = [...values].sort((a, b) => a - b);
  return v.length ? v[Math.floor(v.length / 2)] : null;
}

/** RTT (median), jitter (mean change between consecutive RTTs) and late/lost share. */
export function measureLatency(wsUrl = defaultWsUrl(), count = PINGS) {
  return new Promise((resolve) => {
    const sent = new Map();
    const rtts = [];
    let ws;
    let timer = null;
    let done = false;
    const finish = (error = null) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      if (ws) {
        ws.onmessage = ws.onclose = ws.onerror = null;
        try {
          ws.close(1000);
        } catch {
          /* ignore */
        }
      }
      const onTime = rtts.filter((r) => r <= LATE_MS);
      let jitter = null;
      if (onTime.length > 1) {
        let sum = 0;
        for (let i = 1; i < onTime.length; i++) sum += Math.abs(onTime[i] - onTime[i - 1]);
        jitter = sum / (onTime.length - 1);
      }
      resolve({
        rttMs: median(onTime),
        jitterMs: jitter,
        loss: error ? null : 1 - onTime.length / count,
        error,
      });
    };
    try {
      ws = new WebSocket(wsUrl);
    } catch {
      finish("unreachable");
      return;
    }
    ws.onerror = () => finish(rtts.length ? null : "unreachable");
    ws.onclose = () => finish(rtts.length ? null : "unreachable");
    ws.onopen = async () => {
      for (let i = 1; i <= count; i++) {
        if (ws.readyState !== WebSocket.OPEN) return;
        sent.set(i, performance.now());
        ws.send(JSON.stringify({ type: "ping", id: i }));
        await new Promise((r) => setTimeout(r, PING_GAP_MS));
      }
      timer = setTimeout(() => finish(), LATE_MS);
    };
    ws.onmessage = (ev) => {
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch {
        return;
      }
      if (msg.type !== "pong" || !sent.has(msg.ref)) return;
      rtts.push(performance.now() - sent.get(msg.ref));
      sent.delete(msg.ref);
      if (rtts.length === count) finish();
    };
    setTimeout(() => finish(rtts.length ? null : "unreachable"), count * PING_GAP_MS + LATE_MS + 3000);
  });
}

async function timed(fn) {
  const t0 = performance.now();
  const bytes = await fn();
  return { bytes, ms: Math.max(1, performance.now() - t0) };
}

/** Download then upload, each growing until a transfer takes TARGET_MS or hits 4 MiB. */
export async function measureThroughput(dir) {
  let best = null;
  for (const size of SIZES) {
    let r;
    try {
      if (dir === "down") {
        r = await timed(async () => {
          const resp = await fetch(`/api/check/download?bytes=${size}`, { cache: "no-store" });
          if (resp.status === 429) throw new Error("busy");
          if (!resp.ok) throw new Error(`http ${resp.status}`);
          return (await resp.arrayBuffer()).byteLength;
        });
      } else {
        const body = new Uint8Array(size);
        for (let off = 0; off < size; off += 65536) crypto.getRandomValues(body.subarray(off, Math.min(size, off + 65536)));
        r = await timed(async () => {
          const resp = await fetch("/api/check/upload", { method: "POST", body, cache: "no-store", headers: { "Content-Type": "application/octet-stream" } });
          if (resp.status === 429) throw new Error("busy");
          if (!resp.ok) throw new Error(`http ${resp.status}`);
          return (await resp.json()).bytes;
        });
      }
    } catch (err) {
      return { bps: best ? best.bps : null, error: String(err.message || err) === "busy" ? "busy" : "failed" };
    }
    best = { bps: (r.bytes * 8 * 1000) / r.ms, bytes: r.bytes, ms: r.ms };
    if (r.ms >= TARGET_MS) break;
  }
  return { bps: best ? best.bps : null, error: null, capped: best && best.ms < TARGET_MS };
}

/** Loudness of a microphone track, 0..1, sampled while `onLevel` is called. */
function listen(track, onLevel) {
  const Ctx = window.AudioContext || window.webkitAudioContext;
  if (!Ctx) return () => {};
  const ctx = new Ctx();
  const src = ctx.createMediaStreamSource(new MediaStream([track]));
  const an = ctx.createAnalyser();
  an.fftSize = 1024;
  src.connect(an);
  const buf = new Float32Array(an.fftSize);
  let stop = false;
  const tick = () => {
    if (stop) return;
    an.getFloatTimeDomainData(buf);
    let sum = 0;
    for (const x of buf) sum += x * x;
    onLevel(Math.min(1, Math.sqrt(sum / buf.length) * 4));
    setTimeout(tick, 100);
  };
  ctx.resume().catch(() => {});
  tick();
  return () => {
    stop = true;
    ctx.close().catch(() => {});
  };
}

// -------------------------------------------------------------------------------------
// The check panel (shared by /check and the site page's pre-join step)

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text != null) e.textContent = text;
  return e;
}

export function formatRate(bps) {
  if (bps == null || !isFinite(bps)) return "—";
  const loc = getLang() === "vi" ? "vi-VN" : "en-GB";
  if (bps >= 1e6) return `${(bps / 1e6).toLocaleString(loc, { maximumFractionDigits: 1 })} Mbit/s`;
  return `${Math.round(bps / 1e3).toLocaleString(loc)} kbit/s`;
}

function pct(x) {
  return x == null ? "—" : `${(x * 100).toLocaleString(getLang() === "vi" ? "vi-VN" : "en-GB", { maximumFractionDigits: 1 })} %`;
}

export class CheckPanel {
  /**
   * @param {HTMLElement} root  where to render (emptied)
   * @param {object} opts
   * @param {MediaStream|null} opts.stream   camera + mic already opened by the page
   * @param {Array} opts.notices  getLocalMedia() notices (why a device is missing)
   * @param {boolean} [opts.preview]  show the camera picture (the site page has its own)
   */
  constructor(root, { stream, notices = [], preview = true }) {
    this.root = root;
    this.stream = stream;
    this.notices = notices;
    this.preview = preview;
    this.micLevel = 0;
    this.micPeak = 0;
    this.result = { latency: null, down: null, up: null, verdict: null };
    this.phase = "idle";
    this._stopMic = null;
    this.build();
    this._offLang = onLangChange(() => this.render());
  }

  get camera() {
    return this.stream?.getVideoTracks()[0] || null;
  }

  get mic() {
    return this.stream?.getAudioTracks()[0] || null;
  }

  build() {
    this.root.textContent = "";
    this.root.classList.add("check-panel");
    if (this.preview) {
      const fig = el("figure", "check-preview");
      this.video = el("video");
      this.video.autoplay = true;
      this.video.muted = true;
      this.video.playsInline = true;
      if (this.camera) this.video.srcObject = new MediaStream([this.camera]);
      fig.append(this.video);
      this.root.append(fig);
    }
    this.list = el("ul", "check-list");
    this.rows = {};
    for (const key of ["camera", "mic", "rtt", "down", "up"]) {
      const li = el("li", "check-row");
      li.dataset.check = key;
      const ic = el("span", "check-icon");
      const label = el("span", "check-label");
      const value = el("span", "check-value");
      li.append(ic, label, value);
      if (key === "mic") {
        const meter = el("span", "mic-meter");
        this.meterBar = el("span", "mic-meter-bar");
        meter.append(this.meterBar);
        li.append(meter);
      }
      this.rows[key] = { li, ic, label, value };
      this.list.append(li);
    }
    this.verdictBox = el("div", "check-verdict");
    this.verdictBox.setAttribute("role", "status");
    this.root.append(this.list, this.verdictBox);
    this.render();
  }

  setRow(key, state, value) {
    const r = this.rows[key];
    r.li.dataset.state = state;
    r.label.textContent = t(`check.row.${key}`);
    r.value.textContent = value;
    r.ic.textContent = "";
    r.ic.append(icon(state === "ok" ? "check" : state === "bad" ? "cross" : state === "warn" ? "warn" : "signal"));
  }

  render() {
    const notice = (kinds) => this.notices.find((n) => kinds.includes(n.key));
    // camera
    if (this.camera) {
      const s = this.camera.getSettings ? this.camera.getSettings() : {};
      const size = s.width && s.height ? ` (${s.width}×${s.height})` : "";
      this.setRow("camera", "ok", t("check.camera.ok") + size);
    } else {
      const n = notice(["media_denied", "media_busy", "media_notfound", "media_insecure", "no_camera", "media_error"]);
      this.setRow("camera", "bad", t(`check.device.${n ? n.key : "media_notfound"}`));
    }
    // microphone
    if (this.mic) {
      const heard = this.micPeak > 0.04;
      this.setRow("mic", heard ? "ok" : this.phase === "done" ? "warn" : "run", heard ? t("check.mic.ok") : t("check.mic.speak"));
    } else {
      const n = notice(["media_denied", "media_busy", "media_notfound", "media_insecure", "no_mic", "media_error"]);
      this.setRow("mic", "bad", t(`check.device.${n ? n.key : "media_notfound"}`));
    }
    const r = this.result;
    const lat = r.latency;
    if (!lat) this.setRow("rtt", this.phase === "run" ? "run" : "idle", this.phase === "run" ? t("check.measuring") : "—");
    else if (lat.error) this.setRow("rtt", "bad", t("check.unreachable"));
    else {
      const ms = (x) => (x == null ? "—" : `${Math.round(x)} ms`);
      const state = lat.rttMs > 400 || lat.loss > 0.05 ? "warn" : "ok";
      this.setRow("rtt", state, t("check.rtt.value", { rtt: ms(lat.rttMs), jitter: ms(lat.jitterMs), loss: pct(lat.loss) }));
    }
    for (const dir of ["down", "up"]) {
      const m = r[dir];
      if (!m) this.setRow(dir, this.phase === "run" ? "run" : "idle", this.phase === "run" ? t("check.measuring") : "—");
      else if (m.bps == null) this.setRow(dir, "bad", t(m.error === "busy" ? "check.busy" : "check.failed"));
      else this.setRow(dir, m.error ? "warn" : "ok", (m.capped ? "≥ " : "") + formatRate(m.bps) + (m.error === "busy" ? ` (${t("check.busy")})` : ""));
    }
    // verdict
    const v = r.verdict;
    this.verdictBox.textContent = "";
    this.verdictBox.dataset.level = v ? v.level : "";
    if (!v) {
      this.verdictBox.append(el("p", "check-verdict-main", this.phase === "run" ? t("check.running") : ""));
      return;
    }
    this.verdictBox.append(el("p", "check-verdict-main", t(`check.verdict.${v.level}`)));
    if (v.level !== "none" && v.send !== v.receive) {
      this.verdictBox.append(el("p", "check-verdict-detail", t("check.verdict.split", { send: t(`check.q.${v.send}`), receive: t(`check.q.${v.receive}`) })));
    }
    for (const w of v.warnings) this.verdictBox.append(el("p", "check-verdict-warn", t(`check.warn.${w}`, { rtt: Math.round(r.latency?.rttMs || 0), loss: pct(r.latency?.loss) })));
    if (!this.camera || !this.mic) this.verdictBox.append(el("p", "check-verdict-warn", t("check.warn.devices")));
  }

  /** Run every check; resolves with the result (also kept in sessionStorage for the site page). */
  async run() {
    this.phase = "run";
    this.result = { latency: null, down: null, up: null, verdict: null };
    this.micPeak = 0;
    this.render();
    if (this.mic && !this._stopMic) {
      this._stopMic = listen(this.mic, (level) => {
        this.micLevel = level;
        this.micPeak = Math.max(this.micPeak, level);
        if (this.meterBar) this.meterBar.style.width = `${Math.round(level * 100)}%`;
        if (this.micPeak > 0.04 && this.rows.mic.li.dataset.state !== "ok") this.render();
      });
    }
    const micWait = new Promise((r) => setTimeout(r, MIC_LISTEN_MS));
    this.result.latency = await measureLatency();
    this.render();
    this.result.down = await measureThroughput("down");
    this.render();
    this.result.up = await measureThroughput("up");
    const lat = this.result.latency;
    this.result.verdict = lat.error
      ? { level: "none", send: "none", receive: "none", warnings: [] }
      : verdict({ upBps: this.result.up.bps, downBps: this.result.down.bps, rttMs: lat.rttMs, loss: lat.loss });
    await micWait;
    this.phase = "done";
    this.render();
    const summary = {
      at: Date.now(),
      level: this.result.verdict.level,
      send: this.result.verdict.send,
      receive: this.result.verdict.receive,
      rttMs: lat.rttMs,
      jitterMs: lat.jitterMs,
      loss: lat.loss,
      downBps: this.result.down.bps,
      upBps: this.result.up.bps,
      camera: !!this.camera,
      mic: !!this.mic,
      micHeard: this.micPeak > 0.04,
    };
    try {
      sessionStorage.setItem(LAST_CHECK_KEY, JSON.stringify(summary));
    } catch {
      /* not kept */
    }
    return summary;
  }

  /** Stop listening to the microphone (the check page keeps the panel on screen). */
  stop() {
    if (this._stopMic) this._stopMic();
    this._stopMic = null;
  }

  /** Stop, and forget the panel (the site page's pre-join step is over). */
  dispose() {
    this.stop();
    this._offLang?.();
  }
}

/** A previous check of this tab younger than maxAgeMs, or null. */
export function recentCheck(maxAgeMs = 15 * 60_000) {
  try {
    const v = JSON.parse(sessionStorage.getItem(LAST_CHECK_KEY) || "null");
    return v && Date.now() - v.at < maxAgeMs ? v : null;
  } catch {
    return null;
  }
}

// -------------------------------------------------------------------------------------
// The /check page

export async function startCheckPage() {
  applyI18n(document);
  bindLangButtons(document);
  const token = readToken("site");
  const claims = token ? decodeClaims(token) : null;
  const who = document.querySelector("#identity");
  const joinBtn = document.querySelector("#btn-join");
  const againBtn = document.querySelector("#btn-again");
  const renderHead = () => {
    document.title = t("page.title.check");
    who.textContent = claims ? t("check.for_site", { name: claims.name || claims.sub }) : t("check.no_link");
    joinBtn.hidden = !token;
    joinBtn.textContent = "";
    joinBtn.append(icon("rejoin"), el("span", null, t("btn.join_now")));
    againBtn.textContent = "";
    againBtn.append(icon("signal"), el("span", null, t("check.again")));
  };
  onLangChange(renderHead);
  renderHead();

  const { stream, notices } = await getLocalMedia();
  const panel = new CheckPanel(document.querySelector("#check"), { stream, notices, preview: true });
  window.hoinghi = {
    page: "check",
    get result() {
      return panel.result;
    },
    get phase() {
      return panel.phase;
    },
  };
  const run = async () => {
    againBtn.disabled = true;
    await panel.run();
    againBtn.disabled = false;
  };
  againBtn.addEventListener("click", run);
  joinBtn.addEventListener("click", () => {
    panel.stop();
    stopStream(stream);
    location.assign(`/site#t=${encodeURIComponent(token)}`);
  });
  await run();
}
