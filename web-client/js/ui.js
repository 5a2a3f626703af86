// Page controller shared by the site page and the hub console: status line, notices,
// error/leave overlay, video stage (floor + thumbnails), hidden audio players, own
// preview, roster, and the control buttons. The pages differ only in their markup
// (the hub has a roster table) and in startPage("site"|"hub").

import { t, applyI18n, bindLangButtons, onLangChange, getLang, formatTime, hasKey } from "./i18n.js";
import { Conference, readToken, decodeClaims, FINAL_ERRORS } from "./conference.js";
import { getLocalMedia, stopStream } from "./media.js";
import { icon } from "./icons.js";

const $ = (sel) => document.querySelector(sel);

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text != null) e.textContent = text;
  return e;
}

function playQuietly(media) {
  const p = media.play();
  return p && typeof p.then === "function" ? p : Promise.resolve();
}

/** Server error codes that mean "our client or the link misbehaved" (shown with their code). */
const PROTOCOL_CODES = new Set([
  "not_joined",
  "already_joined",
  "bad_json",
  "bad_message",
  "unknown_type",
  "invalid_message",
  "message_too_large",
  "sdp_invalid",
  "renegotiation_unsupported",
]);

/** Plain-words text for an error code, in the current language. */
export function errorText(code) {
  if (hasKey(`err.${code}`)) return t(`err.${code}`);
  if (PROTOCOL_CODES.has(code)) return t("err.protocol", { code });
  return t("err.unknown", { code });
}

const ROLE_ORDER = { hub: 0, operator: 1, site: 2 };

class VideoTile {
  constructor(transceiver) {
    this.transceiver = transceiver;
    this.root = el("figure", "tile");
    this.root.hidden = true;
    this.video = el("video");
    this.video.autoplay = true;
    this.video.playsInline = true;
    this.video.muted = true; // sound comes through the audio slots
    this.video.dataset.mid = transceiver.mid ?? "";
    this.video.srcObject = new MediaStream([transceiver.receiver.track]);
    this.off = el("div", "tile-off");
    this.off.hidden = true;
    this.caption = el("figcaption");
    this.name = el("span", "tile-name");
    this.muted = el("span", "badge badge-muted");
    this.muted.hidden = true;
    this.muted.append(icon("mic", { slashed: true }), el("span"));
    this.caption.append(this.name, this.muted);
    this.root.append(this.video, this.off, this.caption);
  }

  show(slot, participant) {
    const name = slot.name || participant?.name || slot.site_id || "";
    this.root.hidden = false;
    this.root.dataset.siteId = slot.site_id || "";
    this.root.dataset.participantId = slot.participant_id || "";
    this.root.dataset.slot = String(slot.index);
    this.video.dataset.mid = this.transceiver.mid ?? "";
    this.name.textContent = name;
    this.root.title = name;
    const camOff = participant ? participant.video === false || participant.publishing?.video === false : false;
    this.off.hidden = !camOff;
    this.off.textContent = "";
    if (camOff) {
      this.off.append(icon("cam", { slashed: true }), el("span", "tile-off-name", name), el("span", "tile-off-text", t("stage.cam_off")));
    }
    const micOff = participant ? participant.audio === false || participant.publishing?.audio === false : false;
    this.muted.hidden = !micOff;
    this.muted.lastChild.textContent = t("stage.muted");
  }

  hide() {
    this.root.hidden = true;
    delete this.root.dataset.siteId;
    delete this.root.dataset.participantId;
    delete this.root.dataset.slot;
  }

  destroy() {
    this.video.srcObject = null;
    this.root.remove();
  }
}

class PageApp {
  constructor(page) {
    this.page = page;
    this.conf = null;
    this.localStream = null;
    this.preState = "connecting"; // state before the Conference exists
    this.preError = null;
    this.phase = "media";
    this.claims = null;
    this.token = null;
    this.notices = new Map();
    this.tiles = new Map(); // receive transceiver -> VideoTile
    this.audios = new Map(); // receive transceiver -> <audio>
    this.soundBlocked = false;
    this.wakeLock = null;
    this.e = {
      status: $("#status"),
      statusText: $("#status-text"),
      statusDetail: $("#status-detail"),
      statusReason: $("#status-reason"),
      retryNow: $("#retry-now"),
      meetingTitle: $("#meeting-title"),
      identity: $("#identity"),
      notices: $("#notices"),
      floor: $("#floor"),
      floorEmpty: $("#floor-empty"),
      thumbs: $("#thumbs"),
      overlay: $("#overlay"),
      overlayTitle: $("#overlay-title"),
      overlayMessage: $("#overlay-message"),
      overlayCode: $("#overlay-code"),
      overlayActions: $("#overlay-actions"),
      selfVideo: $("#self-video"),
      selfOff: $("#self-off"),
      selfMic: $("#self-mic"),
      rosterCount: $("#roster-count"),
      rosterCountAll: $("#roster-count-all"),
      rosterList: $("#roster-list"),
      rosterBody: $("#roster-body"),
      rosterEmpty: $("#roster-empty"),
      btnMic: $("#btn-mic"),
      btnCam: $("#btn-cam"),
      btnLeave: $("#btn-leave"),
      btnFullscreen: $("#btn-fullscreen"),
      audioSinks: $("#audio-sinks"),
    };
    this._exposeForTests();
  }

  get state() {
    return this.conf ? this.conf.state : this.preState;
  }

  _exposeForTests() {
    const app = this;
    window.hoinghi = {
      page: this.page,
      get state() {
        return app.state;
      },
      get pc() {
        return app.conf?.pc ?? null;
      },
      get participants() {
        return app.conf ? [...app.conf.participants.values()] : [];
      },
      get self() {
        return app.conf?.self ?? null;
      },
      get meeting() {
        return app.conf?.meeting ?? null;
      },
      get slots() {
        return app.conf?.slots ?? { video: [], audio: [] };
      },
      get lastError() {
        return app.conf?.lastError ?? app.preError;
      },
      get rtt() {
        return app.conf?.rtt ?? null;
      },
      get localStream() {
        return app.localStream;
      },
      get conference() {
        return app.conf;
      },
    };
  }

  async start() {
    applyI18n(document);
    bindLangButtons(document);
    onLangChange(() => this.renderAll());
    this._bindControls();
    this.renderAll();

    this.token = readToken(this.page);
    if (!window.RTCPeerConnection || !window.WebSocket) return this.failEarly("no_webrtc");
    if (!this.token) return this.failEarly("auth_missing");
    this.claims = decodeClaims(this.token);
    if (this.page === "hub" && this.claims?.role === "site") return this.failEarly("wrong_page");
    this.renderIdentity();

    this.phase = "media";
    this.renderStatus();
    const { stream, notices } = await getLocalMedia();
    if (this.preState === "left") {
      // "Leave" was pressed while the browser was still asking for the camera.
      stopStream(stream);
      return;
    }
    this.localStream = stream;
    for (const n of notices) this.addNotice(n.key, n.params);
    this.e.selfVideo.srcObject = stream && stream.getVideoTracks().length ? stream : null;

    this.conf = new Conference({ token: this.token, lang: getLang(), localStream: stream });
    const c = this.conf;
    c.addEventListener("state", () => this.onState());
    c.addEventListener("participants", () => {
      this.renderRoster();
      this.renderIdentity();
    });
    c.addEventListener("slots", () => this.renderStage());
    c.addEventListener("transceivers", () => this.rebuildMedia());
    c.addEventListener("rtt", () => this.renderStatus());
    c.addEventListener("notice", (ev) => this.addNotice("server_error", { code: ev.detail.code }, `server_${ev.detail.code}`));
    window.addEventListener("pagehide", () => {
      if (this.conf && this.conf.state !== "left" && this.conf.state !== "error") this.conf.leave();
    });
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible" && this.state === "connected") this.keepScreenOn();
    });
    c.start();
    this.renderAll();
  }

  failEarly(code) {
    this.preState = "error";
    this.preError = { code, message: "", fatal: true };
    this.renderAll();
  }

  // ----- events ---------------------------------------------------------------------------

  onState() {
    const s = this.state;
    if (s === "connected") {
      this.keepScreenOn();
      this.resumeSound();
    }
    if (s === "left" || s === "error") {
      stopStream(this.localStream);
      this.e.selfVideo.srcObject = null;
      this.releaseScreen();
    }
    this.renderAll();
  }

  _bindControls() {
    this.e.btnMic.addEventListener("click", () => {
      if (!this.conf) return;
      this.conf.setAudioEnabled(!this.conf.audioEnabled);
      this.renderControls();
      this.renderSelf();
    });
    this.e.btnCam.addEventListener("click", () => {
      if (!this.conf) return;
      this.conf.setVideoEnabled(!this.conf.videoEnabled);
      this.renderControls();
      this.renderSelf();
    });
    this.e.btnLeave.addEventListener("click", () => {
      if (this.conf) this.conf.leave();
      else {
        this.preState = "left";
        stopStream(this.localStream);
        this.renderAll();
      }
    });
    this.e.btnFullscreen.addEventListener("click", () => {
      const floor = this.e.floor;
      if (document.fullscreenElement) document.exitFullscreen().catch(() => {});
      else if (floor.requestFullscreen) floor.requestFullscreen().catch(() => {});
    });
    this.e.retryNow.addEventListener("click", () => this.conf?.retryNow());
    // Any click on the page counts as the user gesture browsers want before playing sound.
    document.addEventListener("click", () => {
      if (this.soundBlocked) this.resumeSound();
    });
    setInterval(() => {
      if (this.state === "reconnecting") this.renderStatus();
    }, 1000);
  }

  // ----- media ------------------------------------------------------------------------

  rebuildMedia() {
    const c = this.conf;
    for (const tile of this.tiles.values()) tile.destroy();
    this.tiles.clear();
    for (const a of this.audios.values()) {
      a.srcObject = null;
      a.remove();
    }
    this.audios.clear();
    if (!c) return;
    for (const tr of c.recv.video) {
      const tile = new VideoTile(tr);
      this.tiles.set(tr, tile);
      this.e.thumbs.append(tile.root);
    }
    for (const tr of c.recv.audio) {
      const a = el("audio");
      a.autoplay = true;
      a.dataset.mid = tr.mid ?? "";
      a.srcObject = new MediaStream([tr.receiver.track]);
      this.audios.set(tr, a);
      this.e.audioSinks.append(a);
      playQuietly(a).catch((err) => this.onSoundBlocked(err));
    }
    this.renderStage();
  }

  onSoundBlocked(err) {
    if (!err || err.name !== "NotAllowedError") return;
    if (this.soundBlocked) return;
    this.soundBlocked = true;
    this.addNotice("autoplay", {}, "autoplay", {
      label: t("btn.enable_sound"),
      icon: "sound",
      onClick: () => this.resumeSound(),
    });
  }

  resumeSound() {
    let pending = 0;
    for (const a of this.audios.values()) {
      if (!a.paused) continue;
      pending++;
      playQuietly(a)
        .then(() => {
          if (--pending === 0) {
            this.soundBlocked = false;
            this.removeNotice("autoplay");
          }
        })
        .catch((err) => this.onSoundBlocked(err));
    }
    if (pending === 0 && this.soundBlocked) {
      this.soundBlocked = false;
      this.removeNotice("autoplay");
    }
  }

  async keepScreenOn() {
    try {
      if ("wakeLock" in navigator && !this.wakeLock) {
        this.wakeLock = await navigator.wakeLock.request("screen");
        this.wakeLock.addEventListener("release", () => (this.wakeLock = null));
      }
    } catch {
      /* not allowed (e.g. tab hidden): the screen saver may kick in, nothing else breaks */
    }
  }

  releaseScreen() {
    this.wakeLock?.release().catch(() => {});
    this.wakeLock = null;
  }

  // ----- rendering --------------------------------------------------------------------------

  renderAll() {
    document.title = t(`page.title.${this.page}`);
    this.renderStatus();
    this.renderIdentity();
    this.renderNotices();
    this.renderOverlay();
    this.renderStage();
    this.renderSelf();
    this.renderRoster();
    this.renderControls();
  }

  renderStatus() {
    const s = this.state;
    const c = this.conf;
    let text;
    let detail = null;
    let showRetry = false;
    switch (s) {
      case "connecting":
        text = !c ? (this.phase === "media" ? t("status.media") : t("status.connecting")) : c.phase === "joining" ? t("status.joining") : t("status.connecting");
        break;
      case "joined":
        text = t("status.joined");
        break;
      case "connected":
        text = t("status.connected");
        if (c && c.rtt != null) text += ` · ${t("status.rtt", { ms: c.rtt })}`;
        break;
      case "reconnecting": {
        const n = c ? c.attempt : 1;
        const secs = c && c.retryAt ? Math.max(0, Math.ceil((c.retryAt - Date.now()) / 1000)) : 0;
        text = secs > 0 ? t("status.reconnecting", { s: secs, n }) : t("status.reconnecting_now", { n });
        const reason = c?.reconnectReason;
        if (reason) detail = hasKey(`reason.${reason}`) ? t(`reason.${reason}`) : errorText(reason);
        showRetry = secs > 0;
        break;
      }
      case "error": {
        const code = this.lastError()?.code;
        text = code === "meeting_ended" ? t("status.ended") : hasKey(`status.${code}`) ? t(`status.${code}`) : t("status.error");
        break;
      }
      case "left":
        text = t("status.left");
        break;
      default:
        text = s;
    }
    this.e.status.className = `status status-${s}`;
    this.e.status.dataset.state = s;
    this.e.statusText.textContent = text;
    this.e.statusDetail.hidden = !detail && !showRetry;
    this.e.statusReason.textContent = detail || "";
    this.e.retryNow.hidden = !showRetry;
  }

  lastError() {
    return this.conf?.lastError ?? this.preError;
  }

  renderIdentity() {
    const c = this.conf;
    this.e.meetingTitle.textContent = c?.meeting?.title || c?.meeting?.id || this.claims?.mtg || "";
    const me = c?.self;
    const name = me?.name || this.claims?.name || me?.site_id || this.claims?.sub || "";
    const role = me?.role || this.claims?.role;
    const label = role && hasKey(`role.${role}`) ? t(`role.${role}`) : t(`page.${this.page}`);
    this.e.identity.textContent = !name ? "" : name.toLowerCase() === label.toLowerCase() ? name : `${label}: ${name}`;
  }

  renderOverlay() {
    const s = this.state;
    const o = this.e;
    o.overlayActions.textContent = "";
    if (s !== "error" && s !== "left") {
      o.overlay.hidden = true;
      return;
    }
    o.overlay.hidden = false;
    const actions = [];
    if (s === "left") {
      o.overlay.dataset.kind = "left";
      o.overlayTitle.textContent = t("status.left");
      o.overlayMessage.textContent = "";
      o.overlayCode.textContent = "";
      actions.push({ label: t("btn.rejoin"), icon: "rejoin", onClick: () => location.reload() });
    } else {
      const err = this.lastError() || { code: "internal" };
      const code = err.code;
      o.overlay.dataset.kind = "error";
      o.overlay.dataset.code = code;
      o.overlayTitle.textContent =
        code === "meeting_ended" ? t("status.ended") : hasKey(`err.title.${code}`) ? t(`err.title.${code}`) : t("err.title");
      o.overlayMessage.textContent = errorText(code);
      o.overlayCode.textContent = code === "meeting_ended" ? "" : t("err.code", { code });
      if (code === "replaced") actions.push({ label: t("btn.take_over"), icon: "rejoin", onClick: () => location.reload() });
      else if (code === "wrong_page") {
        actions.push({
          label: t("btn.open_site"),
          onClick: () => location.assign(`/site#t=${encodeURIComponent(this.token)}`),
        });
      } else if (code !== "auth_missing" && (!FINAL_ERRORS.has(code) || code === "meeting_not_found")) {
        actions.push({ label: t("btn.retry"), icon: "rejoin", onClick: () => location.reload() });
      }
    }
    for (const a of actions) {
      const b = el("button", "btn btn-primary");
      b.type = "button";
      if (a.icon) b.append(icon(a.icon));
      b.append(el("span", null, a.label));
      b.addEventListener("click", a.onClick);
      o.overlayActions.append(b);
    }
  }

  renderStage() {
    const c = this.conf;
    const slots = c ? c.slots.video.filter((s) => s && s.participant_id).sort((a, b) => a.index - b.index) : [];
    const shown = [];
    for (const slot of slots) {
      const tr = c.transceiverForSlot("video", slot);
      const tile = tr && this.tiles.get(tr);
      if (!tile || shown.includes(tile)) continue;
      tile.show(slot, c.participantForSlot(slot));
      shown.push(tile);
    }
    for (const tile of this.tiles.values()) if (!shown.includes(tile)) tile.hide();

    const [floorTile, ...thumbTiles] = shown;
    const moved = [];
    // Floor: exactly the first filled slot.
    for (const child of [...this.e.floor.querySelectorAll(":scope > .tile")]) {
      if (!floorTile || child !== floorTile.root) {
        this.e.thumbs.append(child);
        moved.push(child);
      }
    }
    if (floorTile && floorTile.root.parentElement !== this.e.floor) {
      this.e.floor.append(floorTile.root);
      moved.push(floorTile.root);
    }
    if (floorTile) floorTile.root.classList.add("tile-floor");
    for (const tile of thumbTiles) tile.root.classList.remove("tile-floor");
    // Thumbnails in slot order; hidden tiles after them.
    const want = [...thumbTiles.map((x) => x.root), ...[...this.tiles.values()].filter((x) => !shown.includes(x)).map((x) => x.root)];
    const have = [...this.e.thumbs.children];
    if (want.length !== have.length || want.some((r, i) => r !== have[i])) {
      for (const r of want) {
        this.e.thumbs.append(r);
        moved.push(r);
      }
    }
    // A media element that left the document is paused; start it again.
    for (const r of moved) {
      const v = r.querySelector("video");
      if (v && !r.hidden) playQuietly(v).catch(() => {});
    }
    this.e.floorEmpty.hidden = !!floorTile;
    this.e.thumbs.hidden = thumbTiles.length === 0;
    this.e.floor.classList.toggle("has-video", !!floorTile);
  }

  renderSelf() {
    const c = this.conf;
    const stream = this.localStream;
    const hasCam = !!stream?.getVideoTracks().length;
    const hasMic = !!stream?.getAudioTracks().length;
    const camOn = hasCam && (!c || c.videoEnabled) && this.state !== "left" && this.state !== "error";
    const off = this.e.selfOff;
    off.hidden = camOn;
    off.textContent = "";
    if (!camOn) {
      off.append(icon("cam", { slashed: true }), el("span", "tile-off-text", hasCam ? t("state.cam_off") : t("self.no_camera")));
    }
    const micMuted = hasMic && c && !c.audioEnabled;
    this.e.selfMic.hidden = !micMuted;
    this.e.selfMic.textContent = "";
    if (micMuted) this.e.selfMic.append(icon("mic", { slashed: true }), el("span", null, t("state.mic_muted")));
  }

  renderControls() {
    const c = this.conf;
    const active = c && c.state !== "left" && c.state !== "error";
    const hasMic = !!this.localStream?.getAudioTracks().length;
    const hasCam = !!this.localStream?.getVideoTracks().length;

    const mic = this.e.btnMic;
    mic.textContent = "";
    const micOn = !c || c.audioEnabled;
    mic.append(icon("mic", { slashed: !hasMic || !micOn }), el("span", null, !hasMic ? t("btn.no_mic") : micOn ? t("btn.mic_off") : t("btn.mic_on")));
    mic.disabled = !active || !hasMic;
    mic.classList.toggle("is-off", hasMic && !micOn);
    mic.setAttribute("aria-pressed", String(hasMic && !micOn));

    const cam = this.e.btnCam;
    cam.textContent = "";
    const camOn = !c || c.videoEnabled;
    cam.append(icon("cam", { slashed: !hasCam || !camOn }), el("span", null, !hasCam ? t("btn.no_cam") : camOn ? t("btn.cam_off") : t("btn.cam_on")));
    cam.disabled = !active || !hasCam;
    cam.classList.toggle("is-off", hasCam && !camOn);
    cam.setAttribute("aria-pressed", String(hasCam && !camOn));

    const fs = this.e.btnFullscreen;
    fs.textContent = "";
    fs.append(icon("fullscreen"), el("span", null, t("btn.fullscreen")));
    fs.disabled = !active;

    const leave = this.e.btnLeave;
    leave.textContent = "";
    leave.append(icon("leave"), el("span", null, t("btn.leave")));
    leave.disabled = this.state === "left" || this.state === "error";
  }

  /** Everyone in the meeting as this page knows it: self first, then hub, operators, sites. */
  rosterEntries() {
    const c = this.conf;
    if (!c) return [];
    const others = [...c.participants.values()].sort(
      (a, b) => (ROLE_ORDER[a.role] ?? 9) - (ROLE_ORDER[b.role] ?? 9) || String(a.name || a.site_id).localeCompare(String(b.name || b.site_id), "vi"),
    );
    const list = others.map((p) => ({ p, self: false, seen: c.seen.get(p.site_id) }));
    if (c.self && (c.state === "joined" || c.state === "connected" || c.state === "reconnecting")) {
      list.unshift({ p: { ...c.self, audio: c.hasMic && c.audioEnabled, video: c.hasCamera && c.videoEnabled }, self: true, seen: null });
    }
    return list;
  }

  renderRoster() {
    const entries = this.rosterEntries();
    const sites = entries.filter((x) => x.p.role === "site").length;
    if (this.e.rosterCount) this.e.rosterCount.textContent = t("roster.count_sites", { n: sites });
    if (this.e.rosterCountAll) this.e.rosterCountAll.textContent = entries.length ? t("roster.count_all", { n: entries.length }) : "";
    if (this.e.rosterEmpty) this.e.rosterEmpty.hidden = entries.some((x) => !x.self);

    if (this.e.rosterBody) {
      const body = this.e.rosterBody;
      body.textContent = "";
      for (const { p, self, seen } of entries) {
        const tr = el("tr");
        tr.dataset.siteId = p.site_id;
        tr.dataset.participantId = p.id;
        if (self) tr.classList.add("is-self");
        const name = el("td", "col-name");
        name.append(el("span", "roster-name-main", p.name || p.site_id));
        if (self) name.append(el("span", "you", ` ${t("roster.you")}`));
        const sub = el("div", "roster-sub");
        sub.append(
          el("span", "col-role", hasKey(`role.${p.role}`) ? t(`role.${p.role}`) : p.role),
          el("span", "col-site", p.site_id),
        );
        name.append(sub);
        tr.append(
          name,
          this._flagCell("mic", p.audio, p.publishing?.audio),
          this._flagCell("cam", p.video, p.publishing?.video),
          el("td", "col-joined", self ? "" : seen ? (seen.before ? t("roster.before", { time: formatTime(seen.at) }) : formatTime(seen.at)) : ""),
        );
        body.append(tr);
      }
    }
    if (this.e.rosterList) {
      const ul = this.e.rosterList;
      ul.textContent = "";
      for (const { p, self } of entries) {
        const li = el("li", self ? "is-self" : null);
        li.dataset.siteId = p.site_id;
        const name = el("span", "roster-name", p.name || p.site_id);
        if (self) name.append(el("span", "you", ` ${t("roster.you")}`));
        const flags = el("span", "roster-flags");
        flags.append(this._flagIcon("mic", p.audio, p.publishing?.audio), this._flagIcon("cam", p.video, p.publishing?.video));
        li.append(name, flags);
        ul.append(li);
      }
    }
  }

  _flagCell(kind, on, publishing) {
    const state = publishing === false ? "none" : on ? "on" : "off";
    const td = el("td", `col-${kind} flag-${state}`);
    const span = el("span", "flag");
    span.append(icon(kind, { slashed: state !== "on" }), el("span", null, t(`roster.${state}`)));
    td.append(span);
    return td;
  }

  _flagIcon(kind, on, publishing) {
    const state = publishing === false ? "none" : on ? "on" : "off";
    const s = el("span", `flag flag-${state}`);
    const label = `${t(`roster.col.${kind}`)}: ${t(`roster.${state}`)}`;
    s.title = label;
    s.setAttribute("aria-label", label);
    s.setAttribute("role", "img");
    s.append(icon(kind, { slashed: state !== "on" }));
    return s;
  }

  // ----- notices ------------------------------------------------------------------------------

  /** A dismissable message under the header; the same id replaces, never duplicates. */
  addNotice(key, params = {}, id = key, action = null) {
    this.notices.set(id, { key, params, action });
    this.renderNotices();
  }

  removeNotice(id) {
    if (this.notices.delete(id)) this.renderNotices();
  }

  renderNotices() {
    const box = this.e.notices;
    box.textContent = "";
    for (const [id, n] of this.notices) {
      const div = el("div", "notice");
      div.dataset.notice = id;
      const params = n.key === "server_error" ? { message: errorText(n.params.code) } : n.params;
      div.append(el("p", null, t(`notice.${n.key}`, params)));
      if (n.action) {
        const b = el("button", "btn btn-primary");
        b.type = "button";
        if (n.action.icon) b.append(icon(n.action.icon));
        b.append(el("span", null, n.key === "autoplay" ? t("btn.enable_sound") : n.action.label));
        b.addEventListener("click", n.action.onClick);
        div.append(b);
      }
      const close = el("button", "notice-close", "×");
      close.type = "button";
      close.title = t("notice.dismiss");
      close.setAttribute("aria-label", t("notice.dismiss"));
      close.addEventListener("click", () => this.removeNotice(id));
      div.append(close);
      box.append(div);
    }
    box.hidden = this.notices.size === 0;
  }
}

export function startPage(page) {
  const app = new PageApp(page);
  app.start().catch((err) => {
    console.error("hoinghi: page failed to start", err);
    app.failEarly("page_failed");
  });
  return app;
}
