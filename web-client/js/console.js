// Hub console: the site page's media plus the chair's tools.
//
// Live tab: the roster of every expected site grouped by district (joined or not, mic,
// camera, link quality, requests to speak) with the chair's actions (floor, spotlight,
// mute, remove), mute all, lock, roll call, end. Other tabs: meetings (create, schedule,
// choose sites, start, end, hand out links), the site registry (CSV import/export), and
// the meeting's event log with roll-call results.
//
// Live actions go over the signaling socket (`chair` messages); management goes to the
// admin REST API (/api/...) with this page's own hub token as the bearer.

import { t, hasKey, getLang, formatTime, onLangChange } from "./i18n.js";
import { PageApp, el, $, errorText } from "./ui.js";
import { icon } from "./icons.js";
import { formatRate } from "./check.js";

const REGISTRY_REFRESH_MS = 60_000;
const LOG_POLL_MS = 3_000;
const REC_POLL_MS = 15_000; // another console (an operator) may start or stop a recording

/** Case- and accent-insensitive text for searching Vietnamese names. */
function fold(s) {
  return String(s || "")
    .replace(/đ/g, "d")
    .replace(/Đ/g, "D")
    .normalize("NFD")
    .replace(/[\u0300-\u036f]/g, "")
    .toLowerCase();
}

function button(label, { cls = "btn btn-small", iconName = null, onClick = null, title = null } = {}) {
  const b = el("button", cls);
  b.type = "button";
  if (iconName) b.append(icon(iconName));
  b.append(el("span", null, label));
  if (title) b.title = title;
  if (onClick) b.addEventListener("click", onClick);
  return b;
}

function toLocalInput(ms) {
  if (!ms) return "";
  const d = new Date(ms);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

function formatWhen(ms) {
  if (!ms) return "—";
  return new Date(ms).toLocaleString(getLang() === "vi" ? "vi-VN" : "en-GB", {
    day: "2-digit",
    month: "2-digit",
    year: "numeric",
    hour: "2-digit",
    minute: "2-digit",
  });
}

/** 75 -> "01:15", 3725 -> "1:02:05". */
function formatDuration(s) {
  if (s == null || !Number.isFinite(s)) return "—";
  s = Math.max(0, Math.floor(s));
  const pad = (n) => String(n).padStart(2, "0");
  const h = Math.floor(s / 3600);
  const mm = pad(Math.floor((s % 3600) / 60));
  return h ? `${h}:${mm}:${pad(s % 60)}` : `${mm}:${pad(s % 60)}`;
}

/** 1536000 -> "1,5 MB" (vi) / "1.5 MB" (en). */
function formatBytes(n) {
  const loc = getLang() === "vi" ? "vi-VN" : "en-GB";
  const units = ["B", "kB", "MB", "GB"];
  let i = 0;
  let x = Number(n) || 0;
  while (x >= 1000 && i < units.length - 1) {
    x /= 1000;
    i++;
  }
  return `${x.toLocaleString(loc, { maximumFractionDigits: i >= 2 ? 1 : 0 })} ${units[i]}`;
}

/** One row of the live roster; kept across renders so buttons survive statistics updates. */
class RosterRow {
  constructor(app, siteId) {
    this.app = app;
    this.siteId = siteId;
    this.tr = el("tr", "site-row");
    this.tr.dataset.siteId = siteId;
    this.nameCell = el("td", "col-name");
    this.mic = el("td", "col-mic");
    this.cam = el("td", "col-cam");
    this.link = el("td", "col-link");
    this.actions = el("td", "col-actions");
    this.tr.append(this.nameCell, this.mic, this.cam, this.link, this.actions);
    this.key = null;
  }

  update(e) {
    const tr = this.tr;
    tr.classList.toggle("is-joined", !!e.p);
    tr.classList.toggle("has-hand", !!e.p?.hand);
    tr.classList.toggle("is-floor", e.floor);
    tr.classList.toggle("is-speaking", e.speaking);
    tr.dataset.participantId = e.p?.id || "";
    tr.dataset.state = e.removed ? "removed" : e.p ? "joined" : "absent";

    this.nameCell.textContent = "";
    const dot = el("span", `dot ${e.p ? "dot-on" : "dot-off"}`);
    dot.title = e.p ? t("console.joined") : t("console.absent");
    const line = el("div", "name-line");
    line.append(dot, el("span", "roster-name-main", e.name));
    this.nameCell.append(line);
    const sub = el("div", "roster-sub");
    if (e.p?.role && e.p.role !== "site") sub.append(el("span", "col-role", t(`role.${e.p.role}`)));
    if (e.floor) sub.append(el("span", "tag tag-floor", t("stage.floor")));
    if (e.spotlight) sub.append(el("span", "tag tag-spot", t("console.pinned")));
    if (e.kept) sub.append(el("span", "tag tag-kept", t("console.kept")));
    if (e.p?.hand) sub.append(el("span", "tag tag-hand", t("console.hand_at", { time: formatTime(new Date(e.p.hand)) })));
    if (e.speaking) sub.append(el("span", "tag tag-speaking", t("stage.speaking")));
    if (e.removed) sub.append(el("span", "tag tag-removed", t("console.removed")));
    if (sub.childNodes.length) this.nameCell.append(sub);
    this.nameCell.title = `${e.name} (${e.siteId})`;

    this.flag(this.mic, "mic", e.p, e.p?.audio, e.p?.publishing?.audio, e.p?.chair_muted?.audio);
    this.flag(this.cam, "cam", e.p, e.p?.video, e.p?.publishing?.video, e.p?.chair_muted?.video);

    this.link.textContent = "";
    if (e.p) {
      const s = e.stats;
      const q = PageApp.linkQuality(s);
      this.link.className = `col-link link-${q}`;
      this.link.append(el("span", `link-pill link-${q}`, t(`link.q.${q}`)));
      if (s && s.media) {
        const parts = [];
        if (s.rtt_ms != null) parts.push(`${Math.round(s.rtt_ms)} ms`);
        parts.push(`${((Math.max(s.loss_in || 0, s.loss_out || 0)) * 100).toFixed(1)}%`);
        const bw = s.estimated_bps || s.bitrate_out;
        if (bw) parts.push(formatRate(bw));
        if (s.layer != null) parts.push(t("console.layer", { n: s.layer + 1 }));
        this.link.append(el("div", "link-nums", parts.join(" · ")));
      }
    } else {
      this.link.className = "col-link";
    }

    // Actions: rebuilt only when what they depend on changes, so a click is never lost.
    const key = JSON.stringify([!!e.p, e.p?.role, e.floor, e.spotlight, e.kept, e.p?.chair_muted, e.removed, getLang()]);
    if (key !== this.key) {
      this.key = key;
      this.buildActions(e);
    }
  }

  flag(td, kind, p, on, publishing, chair) {
    td.textContent = "";
    if (!p) {
      td.className = `col-${kind} flag-absent`;
      return;
    }
    const state = chair ? "chair" : publishing === false ? "none" : on ? "on" : "off";
    td.className = `col-${kind} flag-${state === "chair" ? "off" : state}${chair ? " flag-chair" : ""}`;
    const span = el("span", "flag");
    const label = state === "chair" ? t("console.chair_off") : t(`roster.${state}`);
    span.title = `${t(`roster.col.${kind}`)}: ${label}`;
    span.append(icon(kind, { slashed: state !== "on" }), el("span", "flag-text", label));
    td.append(span);
  }

  buildActions(e) {
    const a = this.app;
    const td = this.actions;
    td.textContent = "";
    const site = this.siteId;
    if (e.removed) {
      td.append(button(t("console.readmit"), { onClick: () => a.act("readmit", { site_id: site }, () => a.removed.delete(site)) }));
      return;
    }
    if (!e.p) {
      td.append(button(t("console.copy_link"), { iconName: "copy", cls: "btn btn-small btn-quiet", onClick: () => a.copyLink(site, e.name) }));
      return;
    }
    if (e.p.role !== "site") return;
    td.append(
      e.floor
        ? button(t("console.floor_end_short"), { iconName: "floor", cls: "btn btn-small is-active", title: t("console.floor_end"), onClick: () => a.act("floor", {}) })
        : button(t("console.floor_short"), { iconName: "floor", cls: "btn btn-small btn-floor", title: t("console.floor"), onClick: () => a.act("floor", { site_id: site }) }),
    );
    const muted = !!e.p.chair_muted?.audio;
    td.append(
      button(muted ? t("console.unmute") : t("console.mute"), {
        iconName: "mic",
        cls: `btn btn-small btn-mute${muted ? " is-active" : ""}`,
        onClick: () => a.act(muted ? "unmute" : "mute", { site_id: site, kind: "audio" }),
      }),
    );
    const more = el("details", "more");
    const summary = el("summary", "btn btn-small btn-quiet");
    summary.append(icon("more"));
    summary.title = t("console.more");
    summary.setAttribute("aria-label", t("console.more"));
    const menu = el("div", "more-menu");
    const camOff = !!e.p.chair_muted?.video;
    menu.append(
      e.spotlight
        ? button(t("console.unpin"), { iconName: "pin", onClick: () => a.act("spotlight", {}) })
        : button(t("console.pin"), { iconName: "pin", onClick: () => a.act("spotlight", { site_id: site }) }),
      e.kept
        ? button(t("console.unkeep"), { iconName: "pin", cls: "btn btn-small btn-keep is-active", onClick: () => a.act("unpin", { site_id: site }) })
        : button(t("console.keep"), { iconName: "pin", cls: "btn btn-small btn-keep", onClick: () => a.act("pin", { site_id: site }) }),
      button(camOff ? t("console.cam_on") : t("console.cam_off"), {
        iconName: "cam",
        onClick: () => a.act(camOff ? "unmute" : "mute", { site_id: site, kind: "video" }),
      }),
      button(t("console.remove"), {
        iconName: "leave",
        cls: "btn btn-small btn-danger",
        onClick: () => a.confirm(t("console.remove_confirm", { name: e.name }), t("console.remove"), () => a.act("remove", { site_id: site }, () => a.removed.add(site))),
      }),
    );
    for (const b of menu.querySelectorAll("button")) b.addEventListener("click", () => (more.open = false));
    more.append(summary, menu);
    td.append(more);
  }
}

export class HubConsole extends PageApp {
  constructor(page) {
    super(page);
    this.registry = new Map(); // site id -> {id, name, level, parent_id}
    this.expected = []; // site ids expected in this meeting
    this.meetingInfo = null;
    this.rows = new Map(); // site id -> RosterRow
    this.groupOpen = new Map(); // district id -> bool, set by the operator
    this.removed = new Set();
    this.filter = "all";
    this.search = "";
    this.tab = "live";
    this.lastRollCall = null; // the last roll call message with results (kept after it ends)
    this.logAfter = 0;
    this.logRows = [];
    this.editing = null; // meeting id in the editor, or null for a new one
    this.meetings = [];
    // recordings of this meeting: the list from the server, the one running (stopped_at null),
    // and where its elapsed time stood when last read (server seconds + this page's clock)
    this.rec = { list: [], running: null, base: null, busy: false, loaded: false };
    this.c = {
      tabs: [...document.querySelectorAll(".tabs [data-tab]")],
      views: { live: $("#view-live"), meetings: $("#view-meetings"), sites: $("#view-sites"), log: $("#view-log") },
      floorLine: $("#floor-line"),
      hands: $("#hands"),
      rollBox: $("#rollcall-box"),
      meetingState: $("#meeting-state"),
      egress: $("#egress"),
      search: $("#roster-search"),
      filters: [...document.querySelectorAll("[data-filter]")],
      muteAll: $("#btn-mute-all"),
      lock: $("#btn-lock"),
      rollcall: $("#btn-rollcall"),
      end: $("#btn-end"),
      record: $("#btn-record"),
      recIndicator: $("#rec-indicator"),
    };
  }

  get meetingId() {
    return this.conf?.meeting?.id || this.claims?.mtg;
  }

  async start() {
    this._bindConsole();
    await super.start();
    if (!this.conf) return;
    this.conf.addEventListener("link_stats", () => {
      this.renderRoster();
      this.renderEgress();
    });
    this.conf.addEventListener("speaker", () => this.renderConsole());
    this.conf.addEventListener("roll_call", () => {
      const rc = this.conf.rollCall;
      if (rc?.results) this.lastRollCall = rc;
      this.renderConsole();
    });
    this.conf.addEventListener("hand", (ev) => {
      if (!ev.detail.raised) return;
      const params = { name: ev.detail.name || ev.detail.site_id };
      this.addNotice("hand_raised", params, "hand");
      // the queue in the panel stays; the banner only draws the eye for a moment
      setTimeout(() => {
        if (this.notices.get("hand")?.params === params) this.removeNotice("hand");
      }, 10_000);
    });
    this.conf.addEventListener("state", () => {
      if (this.conf.state === "joined") {
        this.loadRegistry();
        this.loadRecordings();
      }
    });
    this.loadRecordings();
    setInterval(() => this.loadRegistry(), REGISTRY_REFRESH_MS);
    setInterval(() => this.loadRecordings(), REC_POLL_MS);
    setInterval(() => {
      if (!this.rec.running) return;
      this.renderRecIndicator();
      if (this.tab === "log") this.renderRecordings();
    }, 1_000);
    setInterval(() => {
      if (this.tab === "log") this.loadLog();
    }, LOG_POLL_MS);
    onLangChange(() => {
      this.renderTab();
      this.renderEgress(); // the head line too, not only at the next link_stats
    });
  }

  // ----- REST ---------------------------------------------------------------------------

  async api(method, path, body = undefined, { raw = false, contentType = "application/json" } = {}) {
    const headers = { Authorization: `Bearer ${this.token}` };
    let payload;
    if (body !== undefined) {
      headers["Content-Type"] = contentType;
      payload = contentType === "application/json" ? JSON.stringify(body) : body;
    }
    let resp;
    try {
      resp = await fetch(path, { method, headers, body: payload, cache: "no-store" });
    } catch {
      throw { error: "server_unreachable", message: "" };
    }
    if (!resp.ok) {
      let err = { error: `http_${resp.status}`, message: "" };
      try {
        err = await resp.json();
      } catch {
        /* not JSON */
      }
      throw err;
    }
    return raw ? resp : resp.json();
  }

  apiErrorText(err) {
    const code = err?.error || err?.code || "unknown";
    if (hasKey(`console.err.${code}`)) return t(`console.err.${code}`);
    if (hasKey(`err.${code}`)) return t(`err.${code}`);
    return t("console.err.other", { code, message: err?.message || "" });
  }

  /** Save what an authorized request returns as a file (a plain link cannot send the token). */
  async download(path, filename, { method = "GET", body = undefined, onError = null } = {}) {
    try {
      const resp = await this.api(method, path, body, { raw: true });
      const a = el("a");
      a.href = URL.createObjectURL(await resp.blob());
      a.download = filename;
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(a.href), 30_000);
    } catch (err) {
      if (onError) onError(err);
      else this.addNotice("console_error", { message: this.apiErrorText(err) }, "console_error");
    }
  }

  async loadRegistry() {
    if (!this.token || !this.meetingId) return;
    try {
      const [sites, meeting] = await Promise.all([this.api("GET", "/api/sites"), this.api("GET", `/api/meetings/${encodeURIComponent(this.meetingId)}`)]);
      this.registry = new Map(sites.sites.map((s) => [s.id, s]));
      this.meetingInfo = meeting;
      this.expected =
        meeting.sites.mode === "all" ? sites.sites.filter((s) => s.level !== "province").map((s) => s.id) : meeting.sites.site_ids || [];
      this.renderRoster();
      this.renderConsole();
    } catch (err) {
      if (err?.error === "forbidden") return; // an operator of another meeting: live tools only
      console.warn("hoinghi: cannot load the site registry", err);
    }
  }

  // ----- chair actions over the socket ----------------------------------------------------

  async act(action, fields = {}, onDone = null) {
    if (!this.conf) return;
    try {
      const reply = await this.conf.chair(action, fields);
      if (onDone) onDone(reply);
    } catch (err) {
      // ending the meeting closes this page's own connection too: the overlay explains that
      if (err.code === "not_connected" && (this.state === "error" || this.state === "left")) return;
      this.addNotice("console_error", { message: err.code ? errorText(err.code) : String(err) }, "console_error");
    }
    this.renderRoster();
    this.renderConsole();
  }

  confirm(text, yesLabel, onYes) {
    const box = $("#confirm");
    $("#confirm-text").textContent = text;
    const yes = $("#confirm-yes");
    const no = $("#confirm-no");
    yes.textContent = yesLabel;
    no.textContent = t("console.cancel");
    box.hidden = false;
    const close = () => {
      box.hidden = true;
      yes.onclick = no.onclick = null;
    };
    yes.onclick = () => {
      close();
      onYes();
    };
    no.onclick = close;
    no.focus();
  }

  async copyLink(siteId, name) {
    try {
      const out = await this.api("POST", `/api/meetings/${encodeURIComponent(this.meetingId)}/links`, { site_ids: [siteId] });
      const url = out.links[0].url;
      try {
        await navigator.clipboard.writeText(url);
        this.addNotice("link_copied", { name }, "link_copied");
      } catch {
        window.prompt(t("console.copy_prompt", { name }), url);
      }
    } catch (err) {
      this.addNotice("console_error", { message: this.apiErrorText(err) }, "console_error");
    }
  }

  // ----- binding --------------------------------------------------------------------------

  _bindConsole() {
    for (const b of this.c.tabs) b.addEventListener("click", () => this.showTab(b.dataset.tab));
    for (const b of this.c.filters)
      b.addEventListener("click", () => {
        this.filter = b.dataset.filter;
        for (const x of this.c.filters) x.setAttribute("aria-pressed", String(x === b));
        this.renderRoster();
      });
    this.c.search.addEventListener("input", () => {
      this.search = fold(this.c.search.value.trim());
      this.renderRoster();
    });
    this.c.muteAll.addEventListener("click", () => this.act(this.conf?.control.allMuted ? "unmute_all" : "mute_all"));
    this.c.lock.addEventListener("click", () => this.act(this.conf?.control.locked ? "unlock" : "lock"));
    this.c.rollcall.addEventListener("click", () => this.act(this.conf?.rollCall?.active ? "roll_call_end" : "roll_call_start"));
    this.c.end.addEventListener("click", () =>
      this.confirm(t("console.end_confirm", { n: this.joinedSites().length }), t("console.end"), () => this.act("end")),
    );
    this.c.record.addEventListener("click", () => this.toggleRecording());
    this._bindMeetings();
    this._bindSites();
    $("#btn-att-csv").addEventListener("click", () => this.download(this.attendanceUrl(), `diem-danh-${this.meetingId}.csv`));
  }

  attendanceUrl(id = this.meetingId) {
    return `/api/meetings/${encodeURIComponent(id)}/attendance.csv?lang=${getLang()}`;
  }

  showTab(tab) {
    this.tab = tab;
    for (const b of this.c.tabs) b.setAttribute("aria-selected", String(b.dataset.tab === tab));
    for (const [name, view] of Object.entries(this.c.views)) view.hidden = name !== tab;
    if (tab === "meetings") this.loadMeetings();
    if (tab === "sites") this.loadSitesView();
    if (tab === "log") {
      this.loadLog();
      this.loadRecordings();
    }
    if (tab === "live") this.loadRegistry();
  }

  renderTab() {
    if (this.tab === "meetings") this.renderMeetings();
    if (this.tab === "sites") this.renderSitesTree();
    if (this.tab === "log") {
      this.renderLog();
      this.renderRecordings();
    }
  }

  // ----- live roster ----------------------------------------------------------------------

  joinedSites() {
    return this.conf ? [...this.conf.participants.values()].filter((p) => p.role === "site") : [];
  }

  districtOf(siteId) {
    let s = this.registry.get(siteId);
    while (s && s.level !== "district") s = s.parent_id ? this.registry.get(s.parent_id) : null;
    return s ? s.id : null;
  }

  /** Every site to show: expected ones, plus whoever joined (chairs, unregistered sites). */
  rosterEntries() {
    const c = this.conf;
    if (!c) return [];
    const bySite = new Map();
    for (const p of c.participants.values()) bySite.set(p.site_id, p);
    const ids = [...new Set([...this.expected, ...bySite.keys(), ...this.removed])];
    const stats = c.rosterStats || {};
    return ids.map((id) => {
      const p = bySite.get(id) || null;
      const reg = this.registry.get(id);
      return {
        siteId: id,
        p,
        name: p?.name || reg?.name || id,
        level: reg?.level || null,
        group: p && p.role !== "site" ? "__chairs" : reg?.level === "province" ? "__chairs" : this.districtOf(id) || "__other",
        stats: p ? stats[p.id] : null,
        floor: !!c.control.floor && c.control.floor.site_id === id,
        spotlight: !!c.control.spotlight && c.control.spotlight.site_id === id,
        kept: (c.control.pins || []).some((x) => x.site_id === id),
        speaking: !!p && this.isSpeaking(p.id),
        removed: this.removed.has(id) && !p,
      };
    });
  }

  matches(e) {
    if (this.filter === "joined" && !e.p) return false;
    if (this.filter === "absent" && e.p) return false;
    if (this.filter === "hands" && !e.p?.hand) return false;
    if (this.search && !fold(e.name).includes(this.search) && !fold(e.siteId).includes(this.search)) return false;
    return true;
  }

  renderRoster() {
    // The site page's compact list and counts come from PageApp; the table is ours.
    const body = this.e.rosterBody;
    if (!body || !this.c) return;
    const entries = this.rosterEntries();
    const sites = entries.filter((e) => e.group !== "__chairs");
    const joined = sites.filter((e) => e.p).length;
    const hands = entries.filter((e) => e.p?.hand).length;
    this.e.rosterCount.textContent = t("roster.count_sites", { n: joined });
    this.e.rosterCountAll.textContent = t("console.count_expected", { n: this.expected.length || sites.length, hands });
    this.e.rosterEmpty.hidden = entries.length > 0;

    const groups = new Map();
    for (const e of entries) {
      if (!groups.has(e.group)) groups.set(e.group, []);
      groups.get(e.group).push(e);
    }
    const name = (g) => (g === "__chairs" ? "" : g === "__other" ? "\uffff" : this.registry.get(g)?.name || g);
    const order = [...groups.keys()].sort((a, b) => name(a).localeCompare(name(b), "vi"));
    const filtering = this.filter !== "all" || !!this.search;
    const want = [];
    for (const g of order) {
      const list = groups.get(g).sort(
        (a, b) => (a.level === "district" ? -1 : 0) - (b.level === "district" ? -1 : 0) || a.name.localeCompare(b.name, "vi"),
      );
      const shown = list.filter((e) => this.matches(e));
      if (!shown.length) continue;
      const joinedHere = list.filter((e) => e.p).length;
      const busy = list.some((e) => e.p?.hand || e.floor);
      const open = filtering || (this.groupOpen.has(g) ? this.groupOpen.get(g) : joinedHere > 0 || busy || g === "__chairs" || g === "__other");
      want.push(this.groupRow(g, name(g), joinedHere, list.length, open, list.filter((e) => e.p?.hand).length));
      if (!open) continue;
      for (const e of shown) {
        let row = this.rows.get(e.siteId);
        if (!row) this.rows.set(e.siteId, (row = new RosterRow(this, e.siteId)));
        row.update(e);
        want.push(row.tr);
      }
    }
    const have = [...body.children];
    if (want.length !== have.length || want.some((r, i) => r !== have[i])) body.replaceChildren(...want);
    this.renderConsole();
  }

  groupRow(g, label, joined, total, open, hands) {
    this._groupRows ||= new Map();
    let tr = this._groupRows.get(g);
    if (!tr) {
      tr = el("tr", "group-row");
      tr.dataset.group = g;
      const th = el("th");
      th.colSpan = 5;
      th.scope = "rowgroup";
      const b = el("button", "group-toggle");
      b.type = "button";
      b.addEventListener("click", () => {
        this.groupOpen.set(g, b.getAttribute("aria-expanded") !== "true");
        this.renderRoster();
      });
      th.append(b);
      tr.append(th);
      this._groupRows.set(g, tr);
    }
    const b = tr.querySelector("button");
    b.setAttribute("aria-expanded", String(open));
    b.textContent = "";
    const title = g === "__chairs" ? t("console.group.chairs") : g === "__other" ? t("console.group.other") : label;
    b.append(el("span", "group-caret", open ? "▾" : "▸"), el("span", "group-name", title));
    if (g !== "__chairs") b.append(el("span", "group-count", t("console.group.count", { n: joined, of: total })));
    if (hands) b.append(el("span", "tag tag-hand", t("console.group.hands", { n: hands })));
    return tr;
  }

  /** The server's own uplink: what it sends now against the operator's capacity. */
  renderEgress() {
    const box = this.c?.egress;
    const e = this.conf?.egress;
    if (!box) return;
    box.hidden = !e;
    if (!e) return;
    const mbit = (bps) => (bps / 1e6).toFixed(bps < 10e6 ? 1 : 0);
    const cap = e.capacity_bps || 0;
    box.textContent = cap
      ? t("console.egress", { used: mbit(e.sent_bps || 0), cap: mbit(cap) })
      : t("console.egress_unlimited", { used: mbit(e.sent_bps || 0) });
    box.classList.toggle("egress-full", !!cap && (e.limiting || (e.sent_bps || 0) > 0.9 * cap));
    if (e.limiting && e.limited_receivers)
      box.append(el("span", "egress-limited", t("console.egress_limited", { n: e.limited_receivers })));
    box.title = cap ? t("console.egress_title", { demand: mbit(e.demand_bps || 0), cap: mbit(cap) }) : "";
  }

  /** Head of the live panel, hands queue, roll-call box and the chair's footer buttons. */
  renderConsole() {
    const c = this.conf;
    if (!this.c || !c) return;
    const ctl = c.control;
    const active = c.state === "connected" || c.state === "joined";
    // meeting state line
    const ms = this.c.meetingState;
    ms.textContent = "";
    const status = ctl.status || this.meetingInfo?.status;
    if (status && status !== "live") {
      ms.append(el("span", "tag", t(`meetings.status.${status}`)));
      if (status === "scheduled" && active)
        ms.append(button(t("meetings.start"), { cls: "btn btn-small btn-primary", iconName: "play", onClick: () => this.act("start", {}, () => this.loadRegistry()) }));
    } else if (status === "live") ms.append(el("span", "tag tag-live", t("meetings.status.live")));
    if (ctl.locked) ms.append(el("span", "tag tag-locked", t("console.locked")));
    if (ctl.allMuted) ms.append(el("span", "tag", t("console.all_muted")));
    if (ctl.speaker && ctl.speaker.participant_id !== c.self?.id)
      ms.append(el("span", "tag tag-speaking", t("console.last_speaker", { name: ctl.speaker.name || ctl.speaker.site_id })));

    // floor / spotlight line
    const fl = this.c.floorLine;
    fl.textContent = "";
    if (ctl.floor) {
      const line = el("div", "floor-item");
      line.append(icon("floor"), el("span", null, t("console.floor_now", { name: ctl.floor.name || ctl.floor.site_id })), button(t("console.floor_end"), { onClick: () => this.act("floor", {}) }));
      fl.append(line);
    }
    if (ctl.spotlight) {
      const line = el("div", "floor-item");
      line.append(icon("pin"), el("span", null, t("console.pin_now", { name: ctl.spotlight.name || ctl.spotlight.site_id })), button(t("console.unpin"), { onClick: () => this.act("spotlight", {}) }));
      fl.append(line);
    }
    const pins = ctl.pins || [];
    if (pins.length) {
      const line = el("div", "floor-item floor-pins");
      const names = pins.map((x) => x.name || x.site_id).join(", ");
      line.append(icon("pin"), el("span", null, t("console.kept_now", { names })), button(t("console.unkeep_all"), { onClick: () => this.act("unpin_all", {}) }));
      fl.append(line);
    }
    fl.hidden = !ctl.floor && !ctl.spotlight && !pins.length;

    // requests to speak, oldest first
    const hands = [...c.participants.values()].filter((p) => p.hand).sort((a, b) => a.hand - b.hand);
    const hb = this.c.hands;
    hb.textContent = "";
    hb.hidden = !hands.length;
    if (hands.length) {
      hb.append(el("h3", null, t("console.hands_title", { n: hands.length })));
      const ul = el("ul");
      for (const p of hands) {
        const li = el("li");
        li.dataset.siteId = p.site_id;
        li.append(
          icon("hand"),
          el("span", "hand-name", p.name || p.site_id),
          el("span", "hand-time", formatTime(new Date(p.hand))),
          button(t("console.floor"), { cls: "btn btn-small btn-primary", iconName: "floor", onClick: () => this.act("floor", { site_id: p.site_id }) }),
          button(t("console.dismiss"), { onClick: () => this.act("lower_hand", { site_id: p.site_id }) }),
        );
        ul.append(li);
      }
      hb.append(ul);
    }

    // roll call
    const rb = this.c.rollBox;
    const rc = c.rollCall?.results ? c.rollCall : this.lastRollCall;
    rb.textContent = "";
    rb.hidden = !rc;
    if (rc) {
      rb.dataset.active = String(!!rc.active);
      const counts = rc.counts || {};
      rb.append(
        icon("rollcall"),
        el("span", "rc-title", rc.active ? t("console.rc_running") : t("console.rc_done", { time: formatTime(new Date(rc.started_at)) })),
        el("span", "rc-counts", t("console.rc_counts", { present: counts.present ?? 0, no_answer: counts.no_answer ?? 0, absent: counts.absent ?? 0 })),
      );
      if (rc.active) rb.append(button(t("console.rc_end"), { cls: "btn btn-small btn-primary", onClick: () => this.act("roll_call_end") }));
      else {
        rb.append(
          button(t("att.csv"), { cls: "btn btn-small btn-primary", iconName: "download", onClick: () => this.download(this.attendanceUrl(), `diem-danh-${this.meetingId}.csv`) }),
          button(t("notice.dismiss"), { onClick: () => ((this.lastRollCall = null), this.renderConsole()) }),
        );
      }
    }

    // footer: the chair's meeting-wide buttons
    const setBtn = (b, iconName, label, { on = false, disabled = !active } = {}) => {
      b.textContent = "";
      b.append(icon(iconName), el("span", null, label));
      b.classList.toggle("is-active", on);
      b.disabled = disabled;
    };
    setBtn(this.c.muteAll, "mic", ctl.allMuted ? t("console.unmute_all") : t("console.mute_all"), { on: ctl.allMuted });
    setBtn(this.c.lock, ctl.locked ? "lock" : "unlock", ctl.locked ? t("console.unlock") : t("console.lock"), { on: ctl.locked });
    setBtn(this.c.rollcall, "rollcall", c.rollCall?.active ? t("console.rc_end") : t("console.rc_start"), { on: !!c.rollCall?.active });
    setBtn(this.c.end, "stop", t("console.end"));
    const rec = this.rec.running;
    setBtn(this.c.record, rec ? "stop" : "rec", rec ? t("console.record_stop") : t("console.record"), {
      on: !!rec,
      // stopping stays possible whatever the page's own connection does
      disabled: this.rec.busy || (!rec && !active),
    });
    this.c.record.classList.toggle("is-recording", !!rec);
    this.c.record.title = t("console.record_title");
    this.renderRecIndicator();
  }

  // ----- recording (biên bản) -------------------------------------------------------------

  recElapsed() {
    const b = this.rec.base;
    return b ? b.s + (performance.now() - b.at) / 1000 : 0;
  }

  /** Take the server's list: the recording with stopped_at null is the one running. */
  setRecordings(list) {
    this.rec.list = list;
    this.rec.loaded = true;
    const running = list.find((r) => r.stopped_at == null && r.state !== "interrupted") || null;
    if (running) {
      const fromServer = running.live?.elapsed_s;
      const s = fromServer > 0 ? fromServer : Math.max(0, Date.now() / 1000 - running.started_at);
      // keep the local clock running smoothly unless the server's figure disagrees by > 2 s
      if (this.rec.running?.id !== running.id || Math.abs(this.recElapsed() - s) > 2) this.rec.base = { s, at: performance.now() };
    } else this.rec.base = null;
    this.rec.running = running;
    this.renderConsole();
    this.renderRecordings();
  }

  async loadRecordings() {
    if (!this.token || !this.meetingId || this.rec.busy) return;
    try {
      const out = await this.api("GET", `/api/meetings/${encodeURIComponent(this.meetingId)}/recordings`);
      if (!this.rec.busy) this.setRecordings(out.recordings || []);
    } catch (err) {
      if (err?.error === "forbidden") return; // a site token: no recording tools
      console.warn("hoinghi: cannot load the recordings", err);
    }
  }

  async toggleRecording() {
    if (this.rec.busy) return;
    const action = this.rec.running ? "stop" : "start";
    this.rec.busy = true;
    this.renderConsole();
    let done = null;
    try {
      const out = await this.api("POST", `/api/meetings/${encodeURIComponent(this.meetingId)}/recording`, { action });
      done = out.recording;
      this.removeNotice("console_error");
      if (action === "stop")
        this.addNotice("recording_saved", { duration: formatDuration(done.duration_s), size: formatBytes(done.bytes) }, "recording");
      else this.removeNotice("recording");
    } catch (err) {
      this.addNotice("console_error", { message: this.apiErrorText(err) }, "console_error");
    }
    this.rec.busy = false;
    if (done) {
      // show the new state at once; the list below replaces it with the server's
      const list = this.rec.list.filter((r) => r.id !== done.id);
      this.setRecordings([done, ...list].sort((a, b) => b.id - a.id));
    } else this.renderConsole();
    await this.loadRecordings();
  }

  renderRecIndicator() {
    const ind = this.c?.recIndicator;
    if (!ind) return;
    const rec = this.rec.running;
    ind.hidden = !rec;
    if (!rec) return;
    ind.textContent = "";
    ind.append(el("span", "rec-dot"), el("span", "rec-word", t("console.recording")), el("span", "rec-time", formatDuration(this.recElapsed())));
    ind.dataset.recordingId = String(rec.id);
  }

  renderRecordings() {
    const body = $("#rec-body");
    const msg = $("#rec-msg");
    if (!body) return;
    body.textContent = "";
    msg.textContent = this.rec.loaded && !this.rec.list.length ? t("rec.none") : "";
    msg.hidden = !msg.textContent;
    for (const r of this.rec.list) {
      const tr = el("tr");
      tr.dataset.recordingId = String(r.id);
      tr.dataset.state = r.state;
      const running = r.stopped_at == null && r.state !== "interrupted";
      const dur = running ? this.recElapsed() : r.duration_s ?? (r.stopped_at ? r.stopped_at - r.started_at : null);
      const file = el("td", "rec-file");
      if (running) file.append(el("span", "tag tag-rec", t("rec.running")));
      else {
        file.append(button(t("rec.download"), { cls: "btn btn-small btn-primary", iconName: "download", onClick: () => this.download(r.file, r.filename) }));
        if (r.state === "interrupted") file.append(el("span", "rec-note", t("rec.interrupted")));
      }
      tr.append(
        el("td", "log-time", formatWhen(r.started_at * 1000)),
        el("td", "rec-num", formatDuration(dur)),
        el("td", "rec-num", running ? "—" : formatBytes(r.bytes)),
        file,
      );
      body.append(tr);
    }
  }

  renderAll() {
    super.renderAll();
    this.renderConsole?.();
  }

  // ----- meetings tab ---------------------------------------------------------------------

  async loadMeetings() {
    try {
      const [list, sites] = await Promise.all([this.api("GET", "/api/meetings"), this.api("GET", "/api/sites")]);
      this.meetings = list.meetings;
      this.registry = new Map(sites.sites.map((s) => [s.id, s]));
      if (this.editing === null && !this._editorOpened) this.openEditor(this.meetings.find((m) => m.id === this.meetingId) || null);
      this.renderMeetings();
    } catch (err) {
      $("#form-msg").textContent = this.apiErrorText(err);
    }
  }

  renderMeetings() {
    const body = $("#meetings-body");
    body.textContent = "";
    const sorted = [...this.meetings].sort((a, b) => (b.scheduled_at || b.created_at) - (a.scheduled_at || a.created_at));
    for (const m of sorted) {
      const tr = el("tr");
      tr.dataset.meetingId = m.id;
      tr.classList.toggle("is-selected", m.id === this.editing);
      const title = el("td");
      const link = el("button", "link-button", m.title);
      link.type = "button";
      link.addEventListener("click", () => this.openEditor(m));
      title.append(link, el("div", "roster-sub", m.id + (m.id === this.meetingId ? ` · ${t("meetings.this_one")}` : "")));
      tr.append(
        title,
        el("td", null, formatWhen(m.scheduled_at || m.started_at)),
        el("td", `status-${m.status}`, t(`meetings.status.${m.status}`) + (m.status === "live" ? ` (${t("meetings.connected", { n: m.connected })})` : "")),
        el("td", null, m.sites.mode === "all" ? t("meetings.all_sites", { n: m.sites.count }) : String(m.sites.count)),
      );
      body.append(tr);
    }
    this.renderEditorLabels();
  }

  _bindMeetings() {
    const form = $("#meeting-form");
    $("#btn-new-meeting").addEventListener("click", () => this.openEditor(null));
    for (const r of form.querySelectorAll('input[name="mode"]')) r.addEventListener("change", () => this.renderPickers());
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      this.saveMeeting();
    });
    const id = () => encodeURIComponent(this.editing);
    const run = async (fn, okKey) => {
      try {
        await fn();
        $("#form-msg").textContent = okKey ? t(okKey) : "";
        await this.loadMeetings();
      } catch (err) {
        $("#form-msg").textContent = this.apiErrorText(err);
      }
    };
    $("#btn-m-start").addEventListener("click", () => run(() => this.api("POST", `/api/meetings/${id()}/start`), "meetings.started"));
    $("#btn-m-end").addEventListener("click", () =>
      this.confirm(t("meetings.end_confirm"), t("meetings.end"), () => run(() => this.api("POST", `/api/meetings/${id()}/end`), "meetings.ended")),
    );
    $("#btn-m-delete").addEventListener("click", () =>
      this.confirm(t("meetings.delete_confirm"), t("meetings.delete"), () =>
        run(async () => {
          await this.api("DELETE", `/api/meetings/${id()}`);
          this.editing = null;
          this.openEditor(null);
        }, "meetings.deleted"),
      ),
    );
    $("#btn-m-links").addEventListener("click", () => this.showLinks());
    $("#btn-m-open").addEventListener("click", async () => {
      try {
        const out = await this.api("POST", `/api/meetings/${id()}/links`, { site_ids: [], hub: true });
        location.assign(out.hub.url); // a new #t= fragment: the page restarts with that token
      } catch (err) {
        $("#form-msg").textContent = this.apiErrorText(err);
      }
    });
  }

  openEditor(m) {
    this._editorOpened = true;
    this.editing = m ? m.id : null;
    const form = $("#meeting-form");
    form.title.value = m ? m.title : "";
    form.when.value = m ? toLocalInput(m.scheduled_at) : "";
    form.duration.value = m?.duration_min ?? "";
    const ids = m?.sites?.site_ids || [];
    let mode = m && m.sites.mode === "list" ? "list" : "all";
    // a list that is exactly whole districts reads better as districts
    const districts = [...this.registry.values()].filter((s) => s.level === "district");
    const chosenDistricts = districts.filter((d) => ids.includes(d.id));
    if (mode === "list" && chosenDistricts.length) {
      const covered = new Set(chosenDistricts.flatMap((d) => [d.id, ...[...this.registry.values()].filter((s) => s.parent_id === d.id).map((s) => s.id)]));
      if (covered.size === ids.length && ids.every((x) => covered.has(x))) mode = "districts";
    }
    form.querySelector(`input[name="mode"][value="${mode}"]`).checked = true;
    this.pickDistricts = new Set(chosenDistricts.map((d) => d.id));
    this.pickSites = new Set(ids);
    $("#form-msg").textContent = "";
    $("#links-box").hidden = true;
    if (m) this.api("GET", `/api/meetings/${encodeURIComponent(m.id)}`).then((full) => {
      if (this.editing !== full.id) return;
      this.pickSites = new Set(full.sites.site_ids || []);
      this.renderPickers();
    }).catch(() => {});
    this.renderPickers();
    this.renderMeetings();
  }

  renderEditorLabels() {
    const m = this.meetings.find((x) => x.id === this.editing);
    $("#editor-title").textContent = m ? t("meetings.edit", { title: m.title }) : t("meetings.new_title");
    $("#pick-all-label").textContent = t("meetings.f.all", { n: [...this.registry.values()].filter((s) => s.level !== "province").length });
    $("#editor-actions").hidden = !m;
    if (m) {
      $("#btn-m-start").hidden = m.status === "live";
      $("#btn-m-start").textContent = m.status === "ended" ? t("meetings.reopen") : t("meetings.start");
      $("#btn-m-end").hidden = m.status === "ended";
      $("#btn-m-links").hidden = m.status === "ended";
      $("#btn-m-open").hidden = m.id === this.meetingId || m.status === "ended";
      $("#btn-m-delete").hidden = m.status === "live";
    }
  }

  renderPickers() {
    const form = $("#meeting-form");
    const mode = form.querySelector('input[name="mode"]:checked').value;
    const districts = [...this.registry.values()].filter((s) => s.level === "district").sort((a, b) => a.name.localeCompare(b.name, "vi"));
    const children = (d) => [...this.registry.values()].filter((s) => s.parent_id === d).sort((a, b) => a.name.localeCompare(b.name, "vi"));
    const pd = $("#pick-districts");
    pd.hidden = mode !== "districts";
    pd.textContent = "";
    for (const d of districts) {
      const lab = el("label", "check-inline");
      const cb = el("input");
      cb.type = "checkbox";
      cb.value = d.id;
      cb.checked = this.pickDistricts.has(d.id);
      cb.addEventListener("change", () => (cb.checked ? this.pickDistricts.add(d.id) : this.pickDistricts.delete(d.id)));
      lab.append(cb, el("span", null, ` ${d.name} (${children(d.id).length + 1})`));
      pd.append(lab);
    }
    const ps = $("#pick-sites");
    ps.hidden = mode !== "list";
    ps.textContent = "";
    if (mode !== "list") return;
    const count = el("p", "pick-count");
    const updateCount = () => (count.textContent = t("meetings.f.chosen", { n: this.pickSites.size }));
    updateCount();
    ps.append(count);
    const province = [...this.registry.values()].filter((s) => s.level === "province");
    const box = (s) => {
      const lab = el("label", "check-inline");
      const cb = el("input");
      cb.type = "checkbox";
      cb.value = s.id;
      cb.checked = this.pickSites.has(s.id);
      cb.addEventListener("change", () => {
        if (cb.checked) this.pickSites.add(s.id);
        else this.pickSites.delete(s.id);
        updateCount();
      });
      lab.append(cb, el("span", null, ` ${s.name}`));
      return lab;
    };
    for (const p of province) ps.append(box(p));
    for (const d of districts) {
      const det = el("details");
      const sum = el("summary");
      const kids = children(d.id);
      sum.append(box(d), el("span", "group-count", ` (${kids.length})`));
      const all = button(t("meetings.f.whole_district"), {
        onClick: (ev) => {
          ev.preventDefault();
          for (const s of [d, ...kids]) this.pickSites.add(s.id);
          this.renderPickers();
        },
      });
      sum.append(all);
      det.append(sum);
      const grid = el("div", "pick-grid");
      for (const s of kids) grid.append(box(s));
      det.append(grid);
      if (kids.some((s) => this.pickSites.has(s.id))) det.open = true;
      ps.append(det);
    }
  }

  async saveMeeting() {
    const form = $("#meeting-form");
    const msg = $("#form-msg");
    const title = form.title.value.trim();
    if (!title) {
      msg.textContent = t("meetings.need_title");
      form.title.focus();
      return;
    }
    const mode = form.querySelector('input[name="mode"]:checked').value;
    const sites =
      mode === "all"
        ? { mode: "all" }
        : mode === "districts"
          ? { mode: "districts", district_ids: [...this.pickDistricts] }
          : { mode: "list", site_ids: [...this.pickSites] };
    if ((mode === "districts" && !sites.district_ids.length) || (mode === "list" && !sites.site_ids.length)) {
      msg.textContent = t("meetings.need_sites");
      return;
    }
    const body = {
      title,
      scheduled_at: form.when.value ? new Date(form.when.value).getTime() : null,
      duration_min: form.duration.value ? Number(form.duration.value) : null,
      sites,
    };
    try {
      const m = this.editing
        ? await this.api("PATCH", `/api/meetings/${encodeURIComponent(this.editing)}`, body)
        : await this.api("POST", "/api/meetings", body);
      await this.loadMeetings();
      this.openEditor(m); // the saved selection, as the server stored it
      $("#form-msg").textContent = t("meetings.saved");
      if (m.id === this.meetingId) this.loadRegistry();
    } catch (err) {
      msg.textContent = this.apiErrorText(err);
    }
  }

  async showLinks() {
    const box = $("#links-box");
    try {
      const out = await this.api("POST", `/api/meetings/${encodeURIComponent(this.editing)}/links`, {});
      box.hidden = false;
      box.textContent = "";
      const head = el("div", "panel-head");
      head.append(
        el("h3", null, t("meetings.links_title", { n: out.links.length, until: formatWhen(out.expires_at) })),
        button(t("meetings.links_csv"), {
          cls: "btn btn-small btn-primary",
          iconName: "download",
          onClick: () => this.downloadLinks(),
        }),
      );
      box.append(head);
      const table = el("table", "data-table links-table");
      const tbody = el("tbody");
      for (const x of out.links) {
        const tr = el("tr");
        tr.dataset.siteId = x.site_id;
        const input = el("input", "link-input");
        input.readOnly = true;
        input.value = x.url;
        input.addEventListener("focus", () => input.select());
        const copy = button(t("console.copy"), {
          iconName: "copy",
          onClick: async () => {
            input.select();
            try {
              await navigator.clipboard.writeText(x.url);
              copy.lastChild.textContent = t("console.copied");
            } catch {
              document.execCommand?.("copy");
            }
          },
        });
        const name = el("td");
        name.append(el("div", null, x.name), el("div", "roster-sub", x.district || ""));
        const cell = el("td");
        cell.append(input);
        const act = el("td");
        act.append(copy);
        tr.append(name, cell, act);
        tbody.append(tr);
      }
      table.append(tbody);
      box.append(table);
    } catch (err) {
      $("#form-msg").textContent = this.apiErrorText(err);
    }
  }

  downloadLinks() {
    return this.download(`/api/meetings/${encodeURIComponent(this.editing)}/links?format=csv`, `links-${this.editing}.csv`, {
      method: "POST",
      body: {},
      onError: (err) => ($("#form-msg").textContent = this.apiErrorText(err)),
    });
  }

  // ----- site registry tab ----------------------------------------------------------------

  _bindSites() {
    const msg = $("#sites-msg");
    const show = (counts) => {
      msg.className = "form-msg is-ok";
      msg.textContent = t("sites.imported", counts);
      this.loadSitesView();
      this.loadRegistry();
    };
    const fail = (err) => {
      msg.className = "form-msg is-error";
      msg.textContent = "";
      msg.append(el("p", null, this.apiErrorText(err)));
      if (Array.isArray(err.errors)) {
        const ul = el("ul");
        for (const line of err.errors.slice(0, 30)) ul.append(el("li", null, line));
        msg.append(ul);
      }
    };
    $("#sites-file").addEventListener("change", async (ev) => {
      const file = ev.target.files[0];
      if (!file) return;
      const replace = $("#sites-replace").checked;
      try {
        const text = await file.arrayBuffer();
        show(await this.api("POST", `/api/sites/import${replace ? "?replace=1" : ""}`, text, { contentType: "text/csv" }));
      } catch (err) {
        fail(err);
      }
      ev.target.value = "";
    });
    $("#btn-sites-sample").addEventListener("click", async () => {
      try {
        show(await this.api("POST", "/api/sites/import?sample=1"));
      } catch (err) {
        fail(err);
      }
    });
    $("#btn-sites-export").addEventListener("click", () => this.download("/api/sites?format=csv", "danh-ba-diem-cau.csv"));
  }

  async loadSitesView() {
    try {
      const sites = await this.api("GET", "/api/sites");
      this.registry = new Map(sites.sites.map((s) => [s.id, s]));
      this.renderSitesTree();
    } catch (err) {
      $("#sites-msg").textContent = this.apiErrorText(err);
    }
  }

  renderSitesTree() {
    const all = [...this.registry.values()];
    $("#sites-title").textContent = t("sites.title", { n: all.length });
    const tree = $("#sites-tree");
    tree.textContent = "";
    const kids = (id) => all.filter((s) => s.parent_id === id).sort((a, b) => a.name.localeCompare(b.name, "vi"));
    const roots = all.filter((s) => !s.parent_id || !this.registry.has(s.parent_id));
    const node = (s, depth) => {
      const children = kids(s.id);
      if (!children.length) {
        const div = el("div", `site-leaf level-${s.level}`);
        div.append(el("span", null, s.name), el("code", null, s.id));
        return div;
      }
      const det = el("details", `site-node level-${s.level}`);
      det.open = depth === 0;
      const sum = el("summary");
      sum.append(el("span", "site-name", s.name), el("code", null, s.id), el("span", "group-count", t("sites.children", { n: children.length })));
      det.append(sum);
      const inner = el("div", depth >= 1 ? "site-grid" : "site-children");
      for (const c of children) inner.append(node(c, depth + 1));
      det.append(inner);
      return det;
    };
    for (const r of roots.sort((a, b) => (a.level === "province" ? -1 : 1) - (b.level === "province" ? -1 : 1))) tree.append(node(r, 0));
  }

  // ----- log tab ------------------------------------------------------------------------

  async loadLog() {
    if (!this.meetingId) return;
    try {
      const out = await this.api("GET", `/api/meetings/${encodeURIComponent(this.meetingId)}/events?after=${this.logAfter}`);
      this.logRows.push(...out.events);
      if (this.logRows.length > 2000) this.logRows.splice(0, this.logRows.length - 2000);
      this.logAfter = out.last_id;
      const att = await this.api("GET", `/api/meetings/${encodeURIComponent(this.meetingId)}/attendance`);
      this.attendance = att;
      this.renderLog();
    } catch (err) {
      console.warn("hoinghi: cannot load the log", err);
    }
  }

  eventText(e) {
    const d = e.data || {};
    const key = `log.kind.${e.kind}${e.kind === "floor" || e.kind === "spotlight" ? (e.site_id ? "" : "_off") : ""}`;
    const kindWord = d.kind ? t(`log.what.${d.kind}`) : "";
    return hasKey(key) ? t(key, { ...d, kind: kindWord, by: d.by || "" }) : e.kind;
  }

  renderLog() {
    const body = $("#log-body");
    body.textContent = "";
    for (const e of [...this.logRows].reverse()) {
      const tr = el("tr");
      tr.dataset.kind = e.kind;
      tr.append(
        el("td", "log-time", formatTime(new Date(e.ts))),
        el("td", null, e.site_name || e.site_id || ""),
        el("td", null, this.eventText(e)),
      );
      body.append(tr);
    }
    const ab = $("#att-body");
    ab.textContent = "";
    const att = this.attendance;
    if (!att || !att.roll_calls.length) {
      ab.append(el("p", "help", t("att.none")));
      return;
    }
    const ul = el("ul", "att-list");
    att.roll_calls.forEach((rc, i) => {
      const li = el("li");
      li.append(
        el("strong", null, t("att.item", { n: i + 1, time: formatTime(new Date(rc.started_at)) })),
        el("span", null, ` ${t("console.rc_counts", rc.counts)}${rc.active ? ` · ${t("console.rc_running")}` : ""}`),
      );
      ul.append(li);
    });
    ab.append(ul);
  }
}
