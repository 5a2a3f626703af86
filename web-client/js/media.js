// Camera and microphone: ask once for both, fall back to whichever works, and turn every
// failure into a notice key (see i18n.js "notice.*") that tells the operator what to do.
// A site without camera or mic still joins: it can watch and listen.

export const VIDEO_CONSTRAINTS = {
  width: { ideal: 1280 },
  height: { ideal: 720 },
  frameRate: { ideal: 20, max: 20 },
};

export const AUDIO_CONSTRAINTS = {
  echoCancellation: true,
  noiseSuppression: true,
  autoGainControl: true,
};

function noticeFor(err) {
  const name = err && err.name;
  if (name === "NotAllowedError" || name === "SecurityError" || name === "PermissionDeniedError") return "media_denied";
  if (name === "NotFoundError" || name === "DevicesNotFoundError" || name === "OverconstrainedError") return "media_notfound";
  if (name === "NotReadableError" || name === "TrackStartError" || name === "AbortError") return "media_busy";
  return "media_error";
}

/**
 * @returns {Promise<{stream: MediaStream|null, notices: Array<{key: string, params?: object}>}>}
 */
export async function getLocalMedia() {
  const md = navigator.mediaDevices;
  if (!md || !md.getUserMedia) {
    return { stream: null, notices: [{ key: window.isSecureContext ? "media_error" : "media_insecure", params: { detail: "getUserMedia" } }] };
  }
  let first;
  try {
    const stream = await md.getUserMedia({ video: VIDEO_CONSTRAINTS, audio: AUDIO_CONSTRAINTS });
    return { stream, notices: [] };
  } catch (err) {
    first = err;
    console.warn("hoinghi: camera+microphone request failed", err);
  }
  const firstKey = noticeFor(first);
  if (firstKey === "media_denied") return { stream: null, notices: [{ key: firstKey }] };

  // One of the two may still work (a PC with a webcam but no mic, or the reverse).
  try {
    const stream = await md.getUserMedia({ audio: AUDIO_CONSTRAINTS });
    const notices = [{ key: "no_camera" }];
    if (firstKey === "media_busy") notices.unshift({ key: "media_busy" });
    return { stream, notices };
  } catch (err) {
    console.warn("hoinghi: microphone-only request failed", err);
  }
  try {
    const stream = await md.getUserMedia({ video: VIDEO_CONSTRAINTS });
    const notices = [{ key: "no_mic" }];
    if (firstKey === "media_busy") notices.unshift({ key: "media_busy" });
    return { stream, notices };
  } catch (err) {
    console.warn("hoinghi: camera-only request failed", err);
  }
  return { stream: null, notices: [{ key: firstKey, params: { detail: (first && first.name) || "?" } }] };
}

export function stopStream(stream) {
  for (const track of stream?.getTracks() || []) track.stop();
}
