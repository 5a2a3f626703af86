// Signaling client + peer connection + receive-slot mapping for protocol v1
// (docs/protocol.md). No DOM access here: pages listen to the events below and render.
//
// Events (EventTarget, CustomEvent.detail as noted):
//   "state"         the connection state or its detail changed (see STATES)
//   "participants"  the roster (this.participants / this.self) changed
//   "slots"         the receive-slot assignment (this.slots) changed
//   "transceivers"  the receive transceivers were (re)created or dropped (this.recv)
//   "notice"        a non-fatal server error, detail = {code, message, ref}
//   "rtt"           a new round-trip time measurement (this.rtt, ms)
//   "control"       floor / spotlight / lock / meeting status / mute-all changed (this.control)
//   "speaker"       the server's dominant speaker changed (this.control.speaker)
//   "hand"          a request to speak was raised or lowered, detail = the `hand` message
//   "chair_muted"   the chair muted or unmuted this site, detail = {kind, muted}
//   "roll_call"     a roll call opened, changed or closed (this.rollCall)
//   "link_stats"    new link figures from the server (this.linkStats, this.rosterStats)
//   "media"         the peer connection's own state changed (this.mediaState)

export const PROTOCOL_VERSION = 1;

export const STATES = ["connecting", "joined", "connected", "reconnecting", "error", "left"];

/**
 * Simulcast layers, lowest first; rids q/h/f as Chrome and the server expect. Chrome sends
 * each as VP8 with 3 temporal layers (L1T3), so the server can also forward a layer at 1/2
 * or 1/4 of its frame rate. maxBitrates are set so that common downlinks are filled by one
 * step: q (~200 kbit/s) + audio fits a 300 kbit/s link, h (~600 kbit/s) + audio an 800 kbit/s one.
 */
export const SIMULCAST_ENCODINGS = [
  { rid: "q", scaleResolutionDownBy: 4, maxBitrate: 200_000 },
  { rid: "h", scaleResolutionDownBy: 2, maxBitrate: 600_000 },
  { rid: "f", scaleResolutionDownBy: 1, maxBitrate: 1_500_000 },
];

const PING_INTERVAL_MS = 10_000;
const FIRST_PING_MS = 3_000;
const PONG_TIMEOUT_MS = 25_000; // two pings unanswered: the link is dead even if TCP says otherwise
const JOIN_TIMEOUT_MS = 15_000;
const ANSWER_TIMEOUT_MS = 20_000;
const ICE_GATHER_TIMEOUT_MS = 5_000;
const MEDIA_CONNECT_TIMEOUT_MS = 30_000;
const PC_DISCONNECTED_GRACE_MS = 6_000;
const FATAL_CLOSE_WAIT_MS = 3_000;
const BACKOFF_MS = [1_000, 2_000, 4_000, 8_000, 15_000, 30_000];
const MEETING_FULL_RETRY_MS = 15_000;
const MEETING_LOCKED_RETRY_MS = 30_000;
const RATE_LIMITED_RETRY_MS = 60_000;
const CHAIR_REPLY_TIMEOUT_MS = 5_000;

/** Errors after which retrying cannot help: the page stops and explains. */
export const FINAL_ERRORS = new Set([
  "auth_invalid",
  "auth_expired",
  "meeting_not_found",
  "not_invited",
  "replaced",
  "removed",
  "meeting_ended",
  "wrong_page",
  "no_webrtc",
]);

/** bye reasons that end the session for good (server_shutdown means: reconnect). */
const FINAL_BYE = new Set(["replaced", "removed", "meeting_ended"]);

/** Close code -> error code, for a close that came without an error/bye message first. */
const CLOSE_CODES = {
  4400: "bad_message",
  4401: "auth_invalid",
  4403: "not_invited",
  4404: "meeting_not_found",
  4409: "meeting_full", // also "replaced", but that one always comes with a bye first
  4429: "rate_limited",
};

// ---------------------------------------------------------------------------------------
// Join link handling

/**
 * The join token: taken from the URL fragment (#t=<JWT>) and then removed from the address
 * bar (so it is not shown, bookmarked or shared by accident). It is kept in sessionStorage,
 * which belongs to this tab only, so that reloading the page (F5) still works.
 */
export function readToken(page) {
  const key = `hoinghi.token.${page}`;
  const params = new URLSearchParams(location.hash.replace(/^#/, ""));
  let token = (params.get("t") || "").trim();
  if (token) {
    try {
      sessionStorage.setItem(key, token);
    } catch {
      /* storage disabled: reload will need the link again */
    }
    history.replaceState(history.state, "", location.pathname + location.search);
  } else {
    try {
      token = sessionStorage.getItem(key) || "";
    } catch {
      token = "";
    }
  }
  // Pasting a new link into the same tab only changes the fragment: start over with it.
  window.addEventListener("hashchange", () => {
    const next = new URLSearchParams(location.hash.replace(/^#/, "")).get("t");
    if (next) {
      try {
        sessionStorage.setItem(key, next.trim());
      } catch {
        /* ignore */
      }
      history.replaceState(history.state, "", location.pathname + location.search);
      location.reload();
    }
  });
  return token || null;
}

/** The JWT payload (unverified: for display only; the server decides). null if unreadable. */
export function decodeClaims(token) {
  try {
    const part = token.split(".")[1];
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const bin = atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4));
    const bytes = Uint8Array.from(bin, (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return claims && typeof claims === "object" ? claims : null;
  } catch {
    return null;
  }
}

export function defaultWsUrl() {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  return `${proto}//${location.host}/ws`;
}

/** Resolve once ICE gathering is complete (non-trickle), or after timeoutMs regardless. */
function waitIceGathering(pc, timeoutMs) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    let timer = null;
    const done = () => {
      clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", onState);
      pc.removeEventListener("icecandidate", onCandidate);
      resolve();
    };
    const onState = () => {
      if (pc.iceGatheringState === "complete") done();
    };
    const onCandidate = (ev) => {
      if (!ev.candidate) done();
    };
    timer = setTimeout(done, timeoutMs);
    pc.addEventListener("icegatheringstatechange", onState);
    pc.addEventListener("icecandidate", onCandidate);
  });
}

// ---------------------------------------------------------------------------------------

export class Conference extends EventTarget {
  /**
   * @param {object} opts
   * @param {string} opts.token      join token (JWT)
   * @param {string} [opts.lang]     "vi" | "en", sent with join
   * @param {MediaStream|null} [opts.localStream]  mic/camera to publish (either may be absent)
   * @param {string} [opts.wsUrl]
   */
  constructor({ token, lang = "vi", localStream = null, wsUrl = defaultWsUrl() }) {
    super();
    this.token = token;
    this.lang = lang;
    this.localStream = localStream;
    this.wsUrl = wsUrl;

    this.state = "connecting";
    /** "socket" (opening the WebSocket) or "joining" (join sent), while state is connecting/reconnecting */
    this.phase = "socket";
    this.reconnectReason = null;
    this.retryAt = null;
    this.attempt = 0;

    this.ws = null;
    this.pc = null;
    this.gen = 0; // bumped on every teardown: callbacks of an older connection are ignored

    this.self = null;
    this.meeting = null;
    /** @type {Map<string, object>} other participants by id */
    this.participants = new Map();
    /** site_id -> {at: Date, before: bool}: when this page first saw the site (before = already there when we joined) */
    this.seen = new Map();
    this.slotCounts = { video: 0, audio: 0 };
    this.slots = { video: [], audio: [] };
    this.recv = { video: [], audio: [] };
    this.iceServers = [];

    this.lastError = null;
    this.rtt = null;
    /** What the operator of this page wants (buttons); a chair mute overrides it. */
    this.audioEnabled = true;
    this.videoEnabled = true;
    /** The chair's mutes of this site (server-enforced; the page shows them and keeps the track off). */
    this.chairMuted = { audio: false, video: false };
    /** Meeting-wide state set by the chair: floor and spotlight are {participant_id, site_id, name} or null. */
    this.control = { floor: null, spotlight: null, pins: [], locked: false, status: null, allMuted: false, speaker: null };
    /** The open (or last) roll call as the server describes it, or null. */
    this.rollCall = null;
    /** This site's own link figures (`link_stats.self`), and everyone's for a chair (by participant id). */
    this.linkStats = null;
    this.rosterStats = {};
    /** The peer connection's state: new, connecting, connected, disconnected, failed (or null without one). */
    this.mediaState = null;
    this._chairSeq = 0;
    this._chairWaiters = new Map();

    this._timers = new Map();
    this._fatal = null;
    this._bye = null;
    this._opened = false;
    this._pings = new Map();
    this._lastPong = 0;
    this._pingSeq = 0;

    this._onOnline = () => {
      if (this.state === "reconnecting" && this._timers.has("retry")) this.retryNow();
    };
    window.addEventListener("online", this._onOnline);
  }

  // ----- public API ----------------------------------------------------------------

  start() {
    this._connect();
  }

  /** Skip the remaining backoff wait. */
  retryNow() {
    if (this.state !== "reconnecting") return;
    this._clearTimer("retry");
    this.retryAt = null;
    this._connect();
  }

  /** Leave for good: tell the server, drop the connection. Local media is the caller's. */
  leave() {
    if (this.state === "left") return;
    this._send({ type: "leave" });
    this._setState("left");
    this._teardown();
    window.removeEventListener("online", this._onOnline);
  }

  get hasMic() {
    return !!this.localStream?.getAudioTracks().length;
  }

  get hasCamera() {
    return !!this.localStream?.getVideoTracks().length;
  }

  setAudioEnabled(on) {
    this.audioEnabled = !!on;
    this._applyTracks();
    this._sendMediaState();
  }

  setVideoEnabled(on) {
    this.videoEnabled = !!on;
    this._applyTracks();
    this._sendMediaState();
  }

  /** Microphone / camera really on: wanted by this page and not muted by the chair. */
  get audioOn() {
    return this.hasMic && this.audioEnabled && !this.chairMuted.audio;
  }

  get videoOn() {
    return this.hasCamera && this.videoEnabled && !this.chairMuted.video;
  }

  _applyTracks() {
    for (const tr of this.localStream?.getAudioTracks() || []) tr.enabled = this.audioEnabled && !this.chairMuted.audio;
    for (const tr of this.localStream?.getVideoTracks() || []) tr.enabled = this.videoEnabled && !this.chairMuted.video;
  }

  /** Ask to speak (raised = true) or withdraw the request. */
  raiseHand(raised) {
    return this._send({ type: "raise_hand", raised: !!raised });
  }

  get handRaised() {
    return !!this.self?.hand;
  }

  /** Answer the open roll call ("present"). */
  answerRollCall() {
    if (!this.rollCall?.active) return false;
    return this._send({ type: "roll_call_answer", roll_call_id: this.rollCall.id });
  }

  /**
   * A chair action (hub / operator pages): resolves with the server's `chair_done`,
   * rejects with {code, message} on an `error` (e.g. forbidden for a site's link).
   */
  chair(action, fields = {}) {
    const id = `chair-${++this._chairSeq}`;
    return new Promise((resolve, reject) => {
      if (!this._send({ type: "chair", id, action, ...fields })) {
        reject({ code: "not_connected", message: "" });
        return;
      }
      const timer = setTimeout(() => {
        this._chairWaiters.delete(id);
        reject({ code: "no_reply", message: "" });
      }, CHAIR_REPLY_TIMEOUT_MS);
      this._chairWaiters.set(id, { resolve, reject, timer });
    });
  }

  /** The receive transceiver carrying a slot: by mid, else by position among its kind. */
  transceiverForSlot(kind, slot) {
    const list = this.recv[kind] || [];
    if (slot.mid != null) {
      const tr = list.find((t) => t.mid === slot.mid);
      if (tr) return tr;
    }
    return list[slot.index] || null;
  }

  /** Participant object for a slot (from the roster, falling back to the slot's own fields). */
  participantForSlot(slot) {
    if (!slot.participant_id) return null;
    if (this.self && slot.participant_id === this.self.id) return this.self;
    return this.participants.get(slot.participant_id) || null;
  }

  // ----- connection lifecycle --------------------------------------------------------

  _connect() {
    const gen = ++this.gen;
    this._fatal = null;
    this._bye = null;
    this._byeRetryMs = 0;
    this._opened = false;
    this.phase = "socket";
    if (this.state !== "reconnecting") this._setState("connecting");
    else this._emit("state");

    let ws;
    try {
      ws = new WebSocket(this.wsUrl);
    } catch (err) {
      console.error("hoinghi: cannot open WebSocket", err);
      this._scheduleReconnect("server_unreachable");
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      if (gen !== this.gen) return;
      this._opened = true;
      this.phase = "joining";
      const join = { type: "join", id: "join", token: this.token, protocol: PROTOCOL_VERSION };
      if (this.lang === "vi" || this.lang === "en") join.lang = this.lang;
      this._send(join);
      this._setTimer("join", JOIN_TIMEOUT_MS, () => this._scheduleReconnect("link_lost"));
      this._emit("state");
    };
    ws.onmessage = (ev) => {
      if (gen !== this.gen) return;
      this._onMessage(ev.data, gen);
    };
    ws.onclose = (ev) => {
      if (gen !== this.gen) return;
      this._onClose(ev.code);
    };
    ws.onerror = () => {
      /* a close event always follows */
    };
  }

  _onClose(closeCode) {
    if (this.state === "left" || this.state === "error") return;
    const fatal = this._fatal;
    const bye = this._bye;
    let code = null;
    if (bye && FINAL_BYE.has(bye)) code = bye;
    else if (fatal) code = fatal.code;
    else if (!bye && CLOSE_CODES[closeCode]) code = CLOSE_CODES[closeCode];

    if (code && (!fatal || fatal.code !== code)) {
      this.lastError = { code, message: "", fatal: true, close_code: closeCode };
    }

    if (code && FINAL_ERRORS.has(code)) {
      this._fail(code);
    } else if (code === "auth_missing") {
      // We always send join at once; the server timed out waiting for it: a slow link.
      this._scheduleReconnect("link_lost");
    } else if (bye === "media_restart") {
      // the server's media process for this site was restarted: rejoin at once
      this._scheduleReconnect("media_restart", 200);
    } else if (bye === "server_shutdown" || code === "server_shutdown") {
      // The server is restarting: come back by ourselves, a little after it said to.
      this.attempt = 0;
      this._scheduleReconnect("server_restart", this._byeRetryMs || 0);
    } else if (bye === "media_failed" || bye === "media_restart") {
      // The server lost this site's media connection (or the worker carrying it): rejoin at once.
      this.attempt = 0;
      this._scheduleReconnect("media_failed");
    } else if (!this._opened && this.reconnectReason === "server_restart" && this.attempt < 6) {
      // Still restarting (about a minute of retries): keep saying so rather than blaming the site's network.
      this._scheduleReconnect("server_restart");
    } else if (code === "meeting_full") {
      this._scheduleReconnect("meeting_full", MEETING_FULL_RETRY_MS);
    } else if (code === "meeting_locked") {
      this._scheduleReconnect("meeting_locked", MEETING_LOCKED_RETRY_MS);
    } else if (code === "rate_limited") {
      this._scheduleReconnect("rate_limited", RATE_LIMITED_RETRY_MS);
    } else if (code) {
      this._scheduleReconnect(code);
    } else if (!this._opened) {
      this._scheduleReconnect(navigator.onLine === false ? "offline" : "server_unreachable");
    } else {
      this._scheduleReconnect(navigator.onLine === false ? "offline" : "link_lost");
    }
  }

  _fail(code) {
    if (!this.lastError || this.lastError.code !== code) {
      this.lastError = { code, message: "", fatal: true };
    }
    this._teardown();
    this._setState("error");
  }

  _scheduleReconnect(reason, minDelayMs = 0) {
    if (this.state === "left" || this.state === "error") return;
    this._teardown();
    const base = BACKOFF_MS[Math.min(this.attempt, BACKOFF_MS.length - 1)];
    const delay = Math.max(minDelayMs, Math.round(base * (0.85 + Math.random() * 0.3)));
    this.attempt += 1;
    this.reconnectReason = reason;
    this.retryAt = Date.now() + delay;
    this._setState("reconnecting");
    this._setTimer("retry", delay, () => {
      this.retryAt = null;
      this._connect();
    });
  }

  async _applyPublishLayers(msg) {
    const pc = this.pc;
    if (!pc || msg.kind !== "video" || !Array.isArray(msg.active)) return;
    const sender = pc.getSenders().find((s) => s.track && s.track.kind === "video");
    if (!sender) return;
    try {
      const params = sender.getParameters();
      if (!params.encodings || params.encodings.length < 2) return;
      let changed = false;
      for (const enc of params.encodings) {
        const want = !enc.rid || msg.active.includes(enc.rid);
        if (enc.active !== want) { enc.active = want; changed = true; }
      }
      if (changed) await sender.setParameters(params);
      this.publishLayers = msg.active.slice();
    } catch (err) {
      console.warn("publish_layers: could not apply", err);
    }
  }

  /** Drop socket, peer connection, timers and receive slots; keeps roster and local media. */
  _teardown() {
    this.gen += 1;
    for (const id of this._timers.values()) clearTimeout(id);
    this._timers.clear();
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      if (ws.readyState === WebSocket.CONNECTING || ws.readyState === WebSocket.OPEN) {
        try {
          ws.close(1000);
        } catch {
          /* ignore */
        }
      }
    }
    const pc = this.pc;
    this.pc = null;
    if (pc) {
      pc.onconnectionstatechange = null;
      try {
        pc.close();
      } catch {
        /* ignore */
      }
    }
    const hadMedia = this.recv.video.length || this.recv.audio.length;
    this.recv = { video: [], audio: [] };
    this.slots = { video: [], audio: [] };
    this._pings.clear();
    for (const [id, w] of this._chairWaiters) {
      clearTimeout(w.timer);
      w.reject({ code: "not_connected", message: "" });
      this._chairWaiters.delete(id);
    }
    if (this.mediaState !== null) {
      this.mediaState = null;
      this._emit("media");
    }
    if (hadMedia) this._emit("transceivers");
    this._emit("slots");
  }

  // ----- messages ---------------------------------------------------------------------

  _send(msg) {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(JSON.stringify(msg));
    return true;
  }

  _onMessage(data, gen) {
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      console.warn("hoinghi: ignoring a frame that is not JSON");
      return;
    }
    if (!msg || typeof msg !== "object" || typeof msg.type !== "string") return;
    switch (msg.type) {
      case "joined":
        this._onJoined(msg, gen);
        break;
      case "queued":
        // a join storm: our offer waits for its turn; the server tells us our place
        // (1 = next) and keeps it moving, so waiting longer than the answer timeout is fine
        this.queuePlace = Number.isInteger(msg.position) ? msg.position : null;
        this._setTimer("answer", ANSWER_TIMEOUT_MS, () => this._scheduleReconnect("media_failed"));
        this._emit("state");
        break;
      case "answer":
        this.queuePlace = null;
        this._onAnswer(msg, gen);
        break;
      case "slots":
        this.slots = {
          video: Array.isArray(msg.video) ? msg.video : [],
          audio: Array.isArray(msg.audio) ? msg.audio : [],
        };
        this._emit("slots");
        break;
      case "participant_joined":
      case "participant_updated":
        if (msg.participant) this._upsertParticipant(msg.participant, msg.type === "participant_joined");
        break;
      case "participant_left":
        this._removeParticipant(msg.participant_id);
        break;
      case "pong":
        this._onPong(msg);
        break;
      case "error":
        this._onError(msg);
        break;
      case "bye":
        this._bye = typeof msg.reason === "string" ? msg.reason : "unknown";
        // server_shutdown: the server asks to wait this long before rejoining (it restarts)
        this._byeRetryMs = Number.isFinite(msg.retry_after_ms) ? Math.min(Math.max(msg.retry_after_ms, 0), 60_000) : 0;
        break;
      case "floor":
      case "spotlight":
        this.control[msg.type] = msg.site_id ? { participant_id: msg.participant_id ?? null, site_id: msg.site_id, name: msg.name ?? null } : null;
        this._emit("control");
        this._emit("slots"); // which slot is shown large follows the floor
        break;
      case "pins":
        // sites the chair keeps in everyone's thumbnails, in pin order
        this.control.pins = Array.isArray(msg.pins) ? msg.pins.filter((p) => p && p.site_id) : [];
        this._emit("control");
        this._emit("slots");
        break;
      case "speaker":
        this.control.speaker = msg.participant_id ? { participant_id: msg.participant_id, site_id: msg.site_id, name: msg.name } : null;
        this._emit("speaker");
        break;
      case "meeting_locked":
        this.control.locked = !!msg.locked;
        this._emit("control");
        break;
      case "meeting_status":
        this.control.status = msg.status ?? null;
        if (this.meeting) this.meeting.status = msg.status;
        this._emit("control");
        break;
      case "hand":
        this._emit("hand", msg);
        break;
      case "muted_by_chair":
        this._onChairMuted(msg);
        break;
      case "roll_call":
        this.rollCall = msg.id ? msg : null;
        this._emit("roll_call");
        break;
      case "publish_layers":
        // The server asks for the simulcast layers someone receives; pausing the others
        // saves this site's uplink and CPU. The lowest layer always stays on.
        this._applyPublishLayers(msg);
        break;
      case "link_stats":
        this.linkStats = msg.self || null;
        if (msg.participants && typeof msg.participants === "object") this.rosterStats = msg.participants;
        // chairs: the server's own uplink (capacity 0 = unlimited), see media/budget.py
        if (msg.egress && typeof msg.egress === "object") this.egress = msg.egress;
        this._emit("link_stats");
        break;
      case "chair_done":
        this._settleChair(msg.ref, msg, null);
        break;
      default:
        // Newer servers may send types this client does not know: ignore them.
        break;
    }
  }

  _onJoined(msg, gen) {
    this._clearTimer("join");
    this.queuePlace = null;
    this.self = msg.participant || null;
    this.meeting = msg.meeting || null;
    this.control = {
      floor: msg.floor || null,
      spotlight: msg.spotlight || null,
      pins: Array.isArray(msg.pins) ? msg.pins.filter((p) => p && p.site_id) : [],
      locked: !!msg.meeting?.locked,
      status: msg.meeting?.status ?? null,
      allMuted: !!msg.all_muted,
      speaker: msg.speaker || null,
    };
    this._syncChairMuted(this.self?.chair_muted);
    this._emit("control");
    const slots = msg.slots || {};
    this.slotCounts = {
      video: Number.isInteger(slots.video) ? slots.video : 0,
      audio: Number.isInteger(slots.audio) ? slots.audio : 0,
    };
    this.iceServers = Array.isArray(msg.ice_servers) ? msg.ice_servers : [];
    this._setParticipants(Array.isArray(msg.participants) ? msg.participants : []);
    this._setState("joined");
    this._sendMediaState();
    this._startPing(gen);
    this._negotiate(gen).catch((err) => {
      if (gen !== this.gen) return;
      console.error("hoinghi: negotiation failed", err);
      this._scheduleReconnect("media_failed");
    });
  }

  async _negotiate(gen) {
    const pc = new RTCPeerConnection({ bundlePolicy: "max-bundle", iceServers: this.iceServers });
    this.pc = pc;
    const stream = this.localStream;
    const mic = stream?.getAudioTracks()[0];
    const cam = stream?.getVideoTracks()[0];
    // Order matters (protocol): send audio, send video, recv video slots, recv audio slots.
    if (mic) pc.addTransceiver(mic, { direction: "sendonly", streams: [stream] });
    // Three simulcast layers (q = 1/4, h = 1/2, f = full size): the server forwards to each
    // site the layer its link can carry; it never re-encodes.
    if (cam) pc.addTransceiver(cam, { direction: "sendonly", streams: [stream], sendEncodings: SIMULCAST_ENCODINGS });
    const recv = { video: [], audio: [] };
    for (let i = 0; i < this.slotCounts.video; i++) recv.video.push(pc.addTransceiver("video", { direction: "recvonly" }));
    for (let i = 0; i < this.slotCounts.audio; i++) recv.audio.push(pc.addTransceiver("audio", { direction: "recvonly" }));
    pc.onconnectionstatechange = () => {
      if (gen === this.gen) this._onPcState(pc.connectionState);
    };

    const offer = await pc.createOffer();
    if (gen !== this.gen) return;
    await pc.setLocalDescription(offer);
    if (gen !== this.gen) return;
    this.recv = recv; // mids are known from here on
    this._emit("transceivers");
    this._emit("slots");

    await waitIceGathering(pc, ICE_GATHER_TIMEOUT_MS);
    if (gen !== this.gen) return;
    this._send({ type: "offer", id: "offer", sdp: pc.localDescription.sdp });
    this._setTimer("answer", ANSWER_TIMEOUT_MS, () => this._scheduleReconnect("media_failed"));
  }

  async _onAnswer(msg, gen) {
    this._clearTimer("answer");
    const pc = this.pc;
    if (!pc || typeof msg.sdp !== "string") return;
    try {
      await pc.setRemoteDescription({ type: "answer", sdp: msg.sdp });
    } catch (err) {
      if (gen !== this.gen) return;
      console.error("hoinghi: the server's answer was rejected", err);
      this.lastError = { code: "sdp_invalid", message: String(err && err.message), fatal: false };
      this._scheduleReconnect("media_failed");
      return;
    }
    if (gen !== this.gen) return;
    this._setTimer("media", MEDIA_CONNECT_TIMEOUT_MS, () => {
      if (this.pc && this.pc.connectionState !== "connected") this._scheduleReconnect("media_failed");
    });
  }

  _onPcState(s) {
    this.mediaState = s;
    this._emit("media");
    if (s === "connected") {
      this._clearTimer("media");
      this._clearTimer("disconnected");
      this.attempt = 0;
      this.reconnectReason = null;
      if (this.state === "joined") this._setState("connected");
    } else if (s === "disconnected") {
      // Often recovers by itself within a few seconds (a lost burst of packets).
      this._setTimer("disconnected", PC_DISCONNECTED_GRACE_MS, () => this._scheduleReconnect("media_failed"));
    } else if (s === "failed") {
      this._scheduleReconnect("media_failed");
    }
  }

  _onError(msg) {
    const err = {
      code: typeof msg.code === "string" ? msg.code : "internal",
      message: typeof msg.message === "string" ? msg.message : "",
      fatal: !!msg.fatal,
    };
    if (msg.ref !== undefined) err.ref = msg.ref;
    if (this._settleChair(msg.ref, null, err)) return; // a refused chair action: the caller shows it
    this.lastError = err;
    if (err.fatal) {
      // The server closes the socket right after; do it ourselves if it does not.
      this._fatal = err;
      const ws = this.ws;
      this._setTimer("fatal_close", FATAL_CLOSE_WAIT_MS, () => {
        if (ws === this.ws) this._onClose(0);
      });
    } else if (err.ref === "offer" || err.ref === "join") {
      // Our join/offer was refused but the socket stays: start over on a fresh connection.
      this._scheduleReconnect(err.code);
    } else {
      this._emit("notice", err);
    }
  }

  _startPing(gen) {
    this._lastPong = Date.now();
    const tick = () => {
      if (gen !== this.gen) return;
      if (Date.now() - this._lastPong > PONG_TIMEOUT_MS) {
        this._scheduleReconnect("link_lost");
        return;
      }
      const id = ++this._pingSeq;
      this._pings.set(id, performance.now());
      if (this._pings.size > 5) this._pings.delete(this._pings.keys().next().value);
      this._send({ type: "ping", id });
      this._setTimer("ping", PING_INTERVAL_MS, tick);
    };
    // First ping a little after joining: the page is busy negotiating right then, which
    // would inflate the first round-trip time shown to the operator.
    this._setTimer("ping", FIRST_PING_MS, tick);
  }

  _onPong(msg) {
    this._lastPong = Date.now();
    let sent = this._pings.get(msg.ref);
    if (sent === undefined && msg.ref === undefined && this._pings.size) {
      sent = [...this._pings.values()].pop();
    }
    if (sent === undefined) return;
    this._pings.delete(msg.ref);
    this.rtt = Math.round(performance.now() - sent);
    this._emit("rtt");
  }

  _sendMediaState() {
    if (this.state !== "joined" && this.state !== "connected") return;
    this._send({ type: "media_state", audio: this.audioOn, video: this.videoOn });
  }

  _settleChair(ref, reply, err) {
    const w = ref !== undefined ? this._chairWaiters.get(ref) : undefined;
    if (!w) return false;
    this._chairWaiters.delete(ref);
    clearTimeout(w.timer);
    if (err) w.reject(err);
    else w.resolve(reply);
    return true;
  }

  /** The chair muted or unmuted this site: keep the local track in step and say so. */
  _onChairMuted(msg) {
    const kind = msg.kind === "video" ? "video" : "audio";
    const muted = !!msg.muted;
    this.chairMuted = { ...this.chairMuted, [kind]: muted };
    // Unmuted by the chair means "we want to hear / see you": switch it back on.
    if (!muted) {
      if (kind === "audio") this.audioEnabled = true;
      else this.videoEnabled = true;
    }
    this._applyTracks();
    this._sendMediaState();
    this._emit("chair_muted", { kind, muted });
  }

  _syncChairMuted(cm) {
    if (!cm || typeof cm !== "object") return;
    const next = { audio: !!cm.audio, video: !!cm.video };
    if (next.audio !== this.chairMuted.audio || next.video !== this.chairMuted.video) {
      this.chairMuted = next;
      this._applyTracks();
    }
  }

  // ----- roster -------------------------------------------------------------------------

  _setParticipants(list) {
    const now = new Date();
    const next = new Map();
    for (const p of list) {
      if (!p || typeof p.id !== "string") continue;
      next.set(p.id, p);
      if (!this.seen.has(p.site_id)) this.seen.set(p.site_id, { at: now, before: true });
    }
    const present = new Set([...next.values()].map((p) => p.site_id));
    for (const site of [...this.seen.keys()]) if (!present.has(site)) this.seen.delete(site);
    this.participants = next;
    this._emit("participants");
    this._emit("slots"); // names/flags shown on video tiles come from the roster
  }

  _upsertParticipant(p, isJoin) {
    if (!p || typeof p.id !== "string") return;
    if (this.self && p.id === this.self.id) {
      this.self = p;
      this._syncChairMuted(p.chair_muted);
    } else {
      this.participants.set(p.id, p);
      if (isJoin || !this.seen.has(p.site_id)) this.seen.set(p.site_id, { at: new Date(), before: false });
    }
    this._emit("participants");
    this._emit("slots");
  }

  _removeParticipant(id) {
    const p = this.participants.get(id);
    if (!p) return;
    this.participants.delete(id);
    if (![...this.participants.values()].some((q) => q.site_id === p.site_id)) this.seen.delete(p.site_id);
    this._emit("participants");
    this._emit("slots");
  }

  // ----- helpers --------------------------------------------------------------------------

  _setState(state) {
    this.state = state;
    if (state !== "reconnecting") this.retryAt = null;
    this._emit("state");
  }

  _emit(type, detail = null) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _setTimer(name, ms, fn) {
    this._clearTimer(name);
    const id = setTimeout(() => {
      this._timers.delete(name);
      fn();
    }, ms);
    this._timers.set(name, id);
  }

  _clearTimer(name) {
    const id = this._timers.get(name);
    if (id !== undefined) {
      clearTimeout(id);
      this._timers.delete(name);
    }
  }
}
