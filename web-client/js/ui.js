// Page controller shared by the site page and the hub console: status line, notices,
// error/leave overlay, video stage (the floor large + thumbnails, who is speaking), hidden
// audio players, own preview, roster, connection indicator, and the control buttons.
// The site page adds the pre-join check, the request to speak and the roll-call prompt;
// the hub console (console.js) extends PageApp with the chair's tools.

import { t, applyI18n, bindLangButtons, onLangChange, getLang, formatTime, hasKey } from "./i18n.js";
import { Conference, readToken, decodeClaims, FINAL_ERRORS } from "./conference.js";
import { getLocalMedia, stopStream } from "./media.js";
import { icon } from "./icons.js";
import { CheckPanel, recentCheck, formatRate } from "./check.js";

export const $ = (sel) => document.querySelector(sel);

const SPEAKING_POLL_MS = 300;
const SPEAKING_LEVEL = 0.02; // audioLevel (0..1, linear) above which a site counts as speaking
const SPEAKING_HOLD_MS = 900; // keep the mark this long after the last loud sample
const CHECK_COUNTDOWN_S = 15; // after a check that found problems, join anyway after this
const SKIP_CHECK_KEY = "hoinghi.precheck"; // localStorage: "off" = join without the check

export function el(tag, cls, text) {
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
    this.speaking = el("span", "badge badge-speaking");
    this.speaking.hidden = true;
    this.speaking.append(icon("sound"), el("span"));
    this.caption.append(this.name, this.speaking, this.muted);
    this.role = el("div", "tile-role");
    this.role.hidden = true;
    this.root.append(this.video, this.off, this.role, this.caption);
  }

  /** Badges: floor ("speaking by the chair's leave") / spotlight, and live voice activity. */
  mark({ floor = false, spotlight = false, kept = false, speaking = false } = {}) {
    this.root.classList.toggle("is-floor", floor);
    this.root.classList.toggle("is-spotlight", spotlight);
    this.root.classList.toggle("is-speaking", speaking);
    this.role.hidden = !floor && !spotlight && !kept;
    this.role.textContent = "";
    if (spotlight) this.role.append(icon("pin"), el("span", null, t("stage.spotlight")));
    else if (floor) this.role.append(icon("floor"), el("span", null, t("stage.floor")));
    else if (kept) this.role.append(icon("pin"), el("span", null, t("stage.kept")));
    this.speaking.hidden = !speaking;
    this.speaking.lastChild.textContent = t("stage.speaking");
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
    const chairMuted = !!participant?.chair_muted?.audio;
    const micOff = participant ? chairMuted || participant.audio === false || participant.publishing?.audio === false : false;
    this.muted.hidden = !micOff;
    this.muted.lastChild.textContent = chairMuted ? t("stage.chair_muted") : t("stage.muted");
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

export class PageApp {
  constructor(page) {
    this.page = page;
    this.speaking = new Map(); // participant id -> time last heard loud
    this.checkSummary = null; // the pre-join link check's result
    this.prejoin = null; // {panel, timer, left} while the pre-join step is on screen
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
      btnHand: $("#btn-hand"),
      audioSinks: $("#audio-sinks"),
      stageStatus: $("#stage-status"),
      rollcall: $("#rollcall"),
      linkPanel: $("#link-panel"),
      prejoin: $("#prejoin"),
      selfBadge: $("#self-badge"),
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
      get control() {
        return app.conf?.control ?? null;
      },
      get rollCall() {
        return app.conf?.rollCall ?? null;
      },
      get linkStats() {
        return app.conf?.linkStats ?? null;
      },
      get speaking() {
        return [...app.speaking.keys()];
      },
      get check() {
        return app.checkSummary;
      },
      get prejoin() {
        return !!app.prejoin;
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

    if (this.page === "site" && this.e.prejoin) {
      const go = await this.runPrejoin(stream, notices);
      if (!go) return;
    }

    this.conf = new Conference({ token: this.token, lang: getLang(), localStream: stream });
    const c = this.conf;
    c.addEventListener("state", () => this.onState());
    c.addEventListener("participants", () => {
      this.renderRoster();
      this.renderIdentity();
      this.renderControls();
      this.renderSelf();
    });
    c.addEventListener("slots", () => this.renderStage());
    c.addEventListener("transceivers", () => this.rebuildMedia());
    c.addEventListener("rtt", () => this.renderStatus());
    c.addEventListener("notice", (ev) => this.addNotice("server_error", { code: ev.detail.code }, `server_${ev.detail.code}`));
    c.addEventListener("control", () => this.onControl());
    c.addEventListener("hand", (ev) => this.onHand(ev.detail));
    c.addEventListener("chair_muted", (ev) => this.onChairMuted(ev.detail));
    c.addEventListener("roll_call", () => this.renderRollCall());
    c.addEventListener("link_stats", () => this.renderLink());
    c.addEventListener("media", () => {
      this.renderStageStatus();
      this.renderLink();
    });
    window.addEventListener("pagehide", () => {
      if (this.conf && this.conf.state !== "left" && this.conf.state !== "error") this.conf.leave();
    });
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible" && this.state === "connected") this.keepScreenOn();
    });
    c.start();
    this.renderAll();
    setInterval(() => this.pollSpeaking(), SPEAKING_POLL_MS);
  }

  // ----- pre-join check (site page) -------------------------------------------------------

  /**
   * Camera, microphone and link check before joining. Joins by itself when everything is
   * fine; otherwise waits CHECK_COUNTDOWN_S (the operator may fix something, or press
   * "join now"), then joins anyway: a site with a weak link still belongs in the meeting.
   * Resolves false if the page was left meanwhile.
   */
  async runPrejoin(stream, notices) {
    const box = this.e.prejoin;
    const skip = (() => {
      try {
        return localStorage.getItem(SKIP_CHECK_KEY) === "off";
      } catch {
        return false;
      }
    })();
    const earlier = recentCheck();
    if (skip || earlier) {
      this.checkSummary = earlier;
      return true;
    }
    this.phase = "check";
    box.hidden = false;
    const panel = new CheckPanel($("#prejoin-check"), { stream, notices, preview: false });
    const state = { panel, timer: null, left: null, resolve: null };
    this.prejoin = state;
    const skipBox = $("#skip-check");
    skipBox.checked = false;
    skipBox.onchange = () => {
      try {
        localStorage.setItem(SKIP_CHECK_KEY, skipBox.checked ? "off" : "on");
      } catch {
        /* not remembered */
      }
    };
    const done = new Promise((resolve) => (state.resolve = resolve));
    $("#btn-join-now").onclick = () => state.resolve(true);
    $("#btn-wait").onclick = () => {
      clearInterval(state.timer);
      state.timer = null;
      state.left = null;
      this.renderPrejoin();
    };
    this.renderPrejoin();
    this.renderStatus();
    panel.run().then((summary) => {
      this.checkSummary = summary;
      const fine = summary.camera && summary.mic && ["hd", "sd"].includes(summary.level);
      if (fine) {
        state.resolve(true);
        return;
      }
      state.left = CHECK_COUNTDOWN_S;
      state.timer = setInterval(() => {
        state.left -= 1;
        if (state.left <= 0) state.resolve(true);
        this.renderPrejoin();
      }, 1000);
      this.renderPrejoin();
    });
    const go = await done;
    clearInterval(state.timer);
    panel.dispose();
    this.prejoin = null;
    box.hidden = true;
    this.phase = "media";
    if (this.preState === "left") return false;
    if (!this.checkSummary && panel.result.verdict) this.checkSummary = panel.result;
    return go;
  }

  renderPrejoin() {
    const st = this.prejoin;
    if (!st) return;
    $("#prejoin-title").textContent = t("prejoin.title");
    $("#prejoin-text").textContent = st.panel.phase === "done" ? (st.left != null ? t("prejoin.countdown", { s: st.left }) : t("prejoin.waiting")) : t("prejoin.text");
    const now = $("#btn-join-now");
    now.textContent = "";
    now.append(icon("rejoin"), el("span", null, t("btn.join_now")));
    const wait = $("#btn-wait");
    wait.hidden = st.left == null;
    wait.textContent = t("prejoin.wait");
    $("#skip-check-label").textContent = t("prejoin.skip");
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
        this.prejoin?.resolve(false);
        this.renderAll();
      }
    });
    this.e.btnHand?.addEventListener("click", () => {
      const c = this.conf;
      if (!c) return;
      c.raiseHand(!c.handRaised);
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

  // ----- the chair's decisions -------------------------------------------------------------

  onControl() {
    const c = this.conf;
    const floor = c.control.floor;
    const mine = floor && c.self && floor.site_id === c.self.site_id;
    if (mine && !this._hadFloor) this.addNotice("floor_given", {}, "floor");
    if (!mine && this._hadFloor) {
      this.removeNotice("floor");
      this.addNotice("floor_ended", {}, "floor");
    }
    this._hadFloor = !!mine;
    if (c.control.locked) this.addNotice("locked", {}, "locked");
    else this.removeNotice("locked");
    this.renderStage();
    this.renderSelf();
    this.renderRoster();
    this.renderIdentity();
    this.renderLink(); // "large video" follows the floor
  }

  onHand() {
    // participant_updated carries the same state; this message only makes it instant
    this.renderControls();
    this.renderRoster();
  }

  onChairMuted({ kind, muted }) {
    this.addNotice(`chair_${muted ? "muted" : "unmuted"}_${kind}`, {}, `chair_${kind}`);
    this.renderControls();
    this.renderSelf();
  }

  renderRollCall() {
    const box = this.e.rollcall;
    if (!box) return;
    const rc = this.conf?.rollCall;
    box.textContent = "";
    const show = rc && rc.active && this.page === "site";
    box.hidden = !show;
    if (!show) return;
    box.dataset.answered = String(!!rc.answered);
    box.append(el("h2", null, t("rollcall.title")));
    if (rc.answered) {
      box.append(el("p", "rollcall-done", t("rollcall.done")));
      return;
    }
    box.append(el("p", null, t("rollcall.text")));
    const b = el("button", "btn btn-primary btn-huge");
    b.type = "button";
    b.id = "btn-present";
    b.append(icon("check"), el("span", null, t("rollcall.present")));
    b.addEventListener("click", () => {
      b.disabled = true;
      this.conf?.answerRollCall();
    });
    box.append(b);
  }

  // ----- who is speaking ------------------------------------------------------------------

  /** Voice activity of each audio slot, from the level the browser measures on it. */
  async pollSpeaking() {
    const c = this.conf;
    if (!c || !c.pc || document.hidden) return;
    const now = performance.now();
    for (const slot of c.slots.audio) {
      if (!slot.participant_id) continue;
      const tr = c.transceiverForSlot("audio", slot);
      if (!tr) continue;
      let level = null;
      try {
        const sources = tr.receiver.getSynchronizationSources?.() || [];
        if (sources.length && sources[0].audioLevel != null) level = sources[0].audioLevel;
        if (level == null) {
          (await tr.receiver.getStats()).forEach((r) => {
            if (r.type === "inbound-rtp" && r.audioLevel != null) level = r.audioLevel;
          });
        }
      } catch {
        continue;
      }
      if (level != null && level > SPEAKING_LEVEL) this.speaking.set(slot.participant_id, now);
    }
    let changed = false;
    for (const [pid, at] of this.speaking) {
      if (now - at > SPEAKING_HOLD_MS || !c.slots.audio.some((s) => s.participant_id === pid)) {
        this.speaking.delete(pid);
        changed = true;
      }
    }
    const key = [...this.speaking.keys()].sort().join(",");
    if (key !== this._speakingKey || changed) {
      this._speakingKey = key;
      this.markTiles();
      this.renderRoster();
    }
  }

  isSpeaking(participantId) {
    return this.speaking.has(participantId);
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
    this.renderRollCall();
    this.renderLink();
    this.renderStageStatus();
    this.renderPrejoin();
  }

  renderStatus() {
    const s = this.state;
    const c = this.conf;
    let text;
    let detail = null;
    let showRetry = false;
    switch (s) {
      case "connecting":
        text = !c
          ? this.phase === "check"
            ? t("status.check")
            : this.phase === "media"
              ? t("status.media")
              : t("status.connecting")
          : c.phase === "joining"
            ? t("status.joining")
            : t("status.connecting");
        break;
      case "joined":
        text = c && c.queuePlace ? t("status.queued", { n: c.queuePlace }) : t("status.joined");
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

  /** Site shown large: the spotlight, else the floor; null = the first filled slot, which
   *  the server keeps for the stage (the latest dominant speaker, else the hub). */
  bigSiteId() {
    const c = this.conf;
    return c?.control.spotlight?.site_id || c?.control.floor?.site_id || null;
  }

  renderStage() {
    const c = this.conf;
    const slots = c ? c.slots.video.filter((s) => s && s.participant_id).sort((a, b) => a.index - b.index) : [];
    // The floor's (or spotlight's) slot is shown large wherever the server put it.
    const big = this.bigSiteId();
    const bigAt = big ? slots.findIndex((s) => s.site_id === big) : -1;
    if (bigAt > 0) slots.unshift(...slots.splice(bigAt, 1));
    const shown = [];
    this.tileSlots = new Map();
    for (const slot of slots) {
      const tr = c.transceiverForSlot("video", slot);
      const tile = tr && this.tiles.get(tr);
      if (!tile || shown.includes(tile)) continue;
      tile.show(slot, c.participantForSlot(slot));
      this.tileSlots.set(tile, slot);
      shown.push(tile);
    }
    for (const tile of this.tiles.values()) if (!shown.includes(tile)) tile.hide();
    this.markTiles();

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

  markTiles() {
    const c = this.conf;
    if (!c || !this.tileSlots) return;
    for (const [tile, slot] of this.tileSlots) {
      tile.mark({
        floor: !!c.control.floor && slot.site_id === c.control.floor.site_id,
        spotlight: !!c.control.spotlight && slot.site_id === c.control.spotlight.site_id,
        kept: (c.control.pins || []).some((x) => x.site_id === slot.site_id),
        speaking: this.isSpeaking(slot.participant_id),
      });
    }
  }

  /** Over the stage while media is not flowing: reconnecting, or the line is hiccuping. */
  renderStageStatus() {
    const box = this.e.stageStatus;
    if (!box) return;
    const c = this.conf;
    let text = null;
    if (c && c.state === "reconnecting") {
      const reason = c.reconnectReason;
      text = t("stage.reconnecting", { n: c.attempt }) + (reason && hasKey(`reason.${reason}`) ? ` ${t(`reason.${reason}`)}` : "");
    } else if (c && c.state === "connected" && c.mediaState === "disconnected") {
      text = t("stage.media_hiccup");
    }
    box.hidden = !text;
    box.textContent = text || "";
  }

  // ----- connection indicator -------------------------------------------------------------

  /** Quality in plain words from what the server measured: good / fair / poor / unknown. */
  static linkQuality(s) {
    if (!s || !s.media) return "unknown";
    const rtt = s.rtt_ms;
    const loss = Math.max(s.loss_out || 0, s.loss_in || 0);
    if ((rtt != null && rtt > 400) || loss > 0.08) return "poor";
    if ((rtt != null && rtt > 150) || loss > 0.02) return "fair";
    return "good";
  }

  renderLink() {
    const box = this.e.linkPanel;
    if (!box) return;
    const c = this.conf;
    const s = c?.linkStats;
    box.textContent = "";
    const head = el("div", "link-head");
    head.append(el("h2", "link-title", t("link.title")));
    let quality = PageApp.linkQuality(s);
    if (c?.state === "reconnecting") quality = "down";
    head.append(el("span", `link-pill link-${quality}`, t(`link.q.${quality}`)));
    box.dataset.quality = quality;
    box.append(head);
    const dl = el("dl", "link-facts");
    const row = (key, value, cls = null) => {
      if (value == null || value === "") return;
      const dt = el("dt", null, t(`link.${key}`));
      const dd = el("dd", cls, value);
      dt.dataset.fact = dd.dataset.fact = key;
      dl.append(dt, dd);
    };
    if (c?.state === "reconnecting") {
      row("state", t("status.reconnecting_now", { n: c.attempt }));
    } else if (!s || !s.media) {
      row("state", c?.state === "connected" ? t("link.measuring") : t("link.not_yet"));
    } else {
      row("rtt_loss", `${s.rtt_ms != null ? `${Math.round(s.rtt_ms)} ms` : "—"} · ${pctText(s.loss_out)}`);
      if (s.bitrate_out != null) row("receive", formatRate(s.bitrate_out) + (s.estimated_bps ? ` / ${t("link.of_estimate", { rate: formatRate(s.estimated_bps) })}` : ""));
      const videos = (s.receiving || []).filter((r) => r.kind === "video");
      const big = this.bigReceiving(videos);
      if (big) {
        const parts = [big.name || big.site_id || ""];
        if (this._bigFrame) parts.push(this._bigFrame);
        if (big.layer != null) parts.push(t("link.layer", { n: big.layer + 1, of: big.layers || "?" }));
        if (big.bitrate != null) parts.push(formatRate(big.bitrate));
        row("big", parts.filter(Boolean).join(" · "));
        if (big.reason) row("why", reasonText(big.reason), `reason reason-${big.reason}`);
      }
      const thumbs = videos.filter((r) => r !== big);
      if (thumbs.length) {
        const layers = [...new Set(thumbs.map((r) => (r.layer != null ? r.layer + 1 : null)).filter((x) => x != null))];
        const why = [...new Set(thumbs.map((r) => r.reason).filter((r) => r && r !== "ok"))];
        row("thumbs_label", t("link.thumbs", { n: thumbs.length, layers: layers.join(", ") || "—" }) + (why.length ? ` — ${why.map(reasonText).join("; ")}` : ""));
      }
      const sending = s.sending?.video;
      if (sending) {
        const active = (sending.layers || []).filter((l) => l.active);
        const rate = active.reduce((a, l) => a + (l.bitrate || 0), 0);
        row("send_label", sending.muted ? t("link.send_muted") : t("link.send", { rate: formatRate(rate), n: active.length }));
      }
    }
    if (this.checkSummary?.level) row("check", t(`check.q.${this.checkSummary.level}`));
    box.append(dl);
    this.measureBigFrame();
  }

  /** The receive entry of the video shown large. */
  bigReceiving(videos) {
    const big = this.bigSiteId();
    const byBig = big && videos.find((r) => r.site_id === big);
    if (byBig) return byBig;
    const slots = (this.conf?.slots.video || []).filter((x) => x.participant_id).sort((a, b) => a.index - b.index);
    return slots.length ? videos.find((r) => r.participant_id === slots[0].participant_id) || null : null;
  }

  /** The browser's own view of the large video: decoded frame size (e.g. 1280×720). */
  async measureBigFrame() {
    const floorVideo = this.e.floor?.querySelector(".tile video");
    const tr = floorVideo && [...this.tiles.keys()].find((x) => this.tiles.get(x).video === floorVideo);
    if (!tr) {
      this._bigFrame = null;
      return;
    }
    try {
      let size = null;
      (await tr.receiver.getStats()).forEach((r) => {
        if (r.type === "inbound-rtp" && r.frameWidth) size = `${r.frameWidth}×${r.frameHeight}`;
      });
      this._bigFrame = size;
    } catch {
      this._bigFrame = null;
    }
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
    const chairMuted = !!c?.chairMuted.audio;
    const micMuted = hasMic && c && (!c.audioEnabled || chairMuted);
    this.e.selfMic.hidden = !micMuted;
    this.e.selfMic.textContent = "";
    if (micMuted) this.e.selfMic.append(icon("mic", { slashed: true }), el("span", null, chairMuted ? t("state.chair_muted") : t("state.mic_muted")));
    if (this.e.selfBadge) {
      const onFloor = !!c?.control.floor && c.self && c.control.floor.site_id === c.self.site_id;
      this.e.selfBadge.hidden = !onFloor;
      this.e.selfBadge.textContent = "";
      if (onFloor) this.e.selfBadge.append(icon("floor"), el("span", null, t("self.on_floor")));
    }
  }

  renderControls() {
    const c = this.conf;
    const active = c && c.state !== "left" && c.state !== "error";
    const hasMic = !!this.localStream?.getAudioTracks().length;
    const hasCam = !!this.localStream?.getVideoTracks().length;

    const mic = this.e.btnMic;
    mic.textContent = "";
    const micChair = !!c?.chairMuted.audio;
    const micOn = !c || (c.audioEnabled && !micChair);
    const micLabel = !hasMic ? t("btn.no_mic") : micChair ? t("btn.mic_chair") : micOn ? t("btn.mic_off") : t("btn.mic_on");
    mic.append(icon("mic", { slashed: !hasMic || !micOn }), el("span", null, micLabel));
    mic.disabled = !active || !hasMic || micChair;
    mic.classList.toggle("is-off", hasMic && !micOn);
    mic.classList.toggle("is-chair", micChair);
    mic.setAttribute("aria-pressed", String(hasMic && !micOn));

    const cam = this.e.btnCam;
    cam.textContent = "";
    const camChair = !!c?.chairMuted.video;
    const camOn = !c || (c.videoEnabled && !camChair);
    const camLabel = !hasCam ? t("btn.no_cam") : camChair ? t("btn.cam_chair") : camOn ? t("btn.cam_off") : t("btn.cam_on");
    cam.append(icon("cam", { slashed: !hasCam || !camOn }), el("span", null, camLabel));
    cam.disabled = !active || !hasCam || camChair;
    cam.classList.toggle("is-off", hasCam && !camOn);
    cam.classList.toggle("is-chair", camChair);
    cam.setAttribute("aria-pressed", String(hasCam && !camOn));

    const hand = this.e.btnHand;
    if (hand) {
      const raised = !!c?.handRaised;
      const onFloor = !!c?.control.floor && c.self && c.control.floor.site_id === c.self.site_id;
      hand.textContent = "";
      hand.append(icon(onFloor ? "floor" : "hand"), el("span", null, onFloor ? t("btn.on_floor") : raised ? t("btn.hand_down") : t("btn.hand_up")));
      hand.disabled = !active || !c?.self || onFloor;
      hand.classList.toggle("is-raised", raised);
      hand.setAttribute("aria-pressed", String(raised));
    }

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
      list.unshift({ p: { ...c.self, audio: c.audioOn, video: c.videoOn }, self: true, seen: null });
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
        li.classList.toggle("is-speaking", this.isSpeaking(p.id));
        const name = el("span", "roster-name", p.name || p.site_id);
        if (self) name.append(el("span", "you", ` ${t("roster.you")}`));
        const flags = el("span", "roster-flags");
        const floorSite = this.conf?.control.floor?.site_id;
        if (floorSite && floorSite === p.site_id) flags.append(this._badgeIcon("floor", t("stage.floor")));
        if (p.hand) flags.append(this._badgeIcon("hand", t("roster.hand")));
        flags.append(this._flagIcon("mic", p.audio && !p.chair_muted?.audio, p.publishing?.audio), this._flagIcon("cam", p.video && !p.chair_muted?.video, p.publishing?.video));
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

  _badgeIcon(name, label) {
    const s = el("span", `flag flag-${name}`);
    s.title = label;
    s.setAttribute("aria-label", label);
    s.setAttribute("role", "img");
    s.append(icon(name));
    return s;
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

function pctText(x) {
  if (x == null) return "—";
  return `${t("link.loss")} ${(x * 100).toLocaleString(getLang() === "vi" ? "vi-VN" : "en-GB", { maximumFractionDigits: 1 })} %`;
}

/** Plain words for why the server sends this layer (allocator reasons or our own). */
export function reasonText(reason) {
  return hasKey(`reason.layer.${reason}`) ? t(`reason.layer.${reason}`) : reason;
}

export function startPage(page, AppClass = PageApp) {
  const app = new AppClass(page);
  app.start().catch((err) => {
    console.error("hoinghi: page failed to start", err);
    app.failEarly("page_failed");
  });
  return app;
}
