// All user-visible text of the web client, in Vietnamese (default) and English.
//
// Rules for writing strings here: plain words an operator at a commune office understands,
// no jargon (no "WebRTC", "ICE", "token"), and every error says what to do next.
//
// Usage: t("key", {param: value}) returns the string in the current language with {param}
// replaced. Static markup uses data-i18n="key" (textContent), data-i18n-title="key"
// (title + aria-label) and data-i18n-placeholder="key"; applyI18n() fills them.

const STORAGE_KEY = "hoinghi.lang";
export const LANGS = ["vi", "en"];
export const DEFAULT_LANG = "vi";

const STRINGS = {
  vi: {
    "app.title": "Hội nghị trực tuyến",
    "page.site": "Điểm cầu",
    "page.hub": "Bàn điều khiển trung tâm",
    "page.title.site": "Hội nghị trực tuyến — Điểm cầu",
    "page.title.hub": "Hội nghị trực tuyến — Trung tâm tỉnh",
    "lang.label": "Ngôn ngữ",
    "lang.vi": "Tiếng Việt",
    "lang.en": "English",

    "status.connecting": "Đang kết nối tới máy chủ…",
    "status.media": "Đang mở camera và micro…",
    "status.joining": "Đang vào phòng họp…",
    "status.joined": "Đã vào phòng, đang nối hình và tiếng…",
    "status.connected": "Đã kết nối — đang họp",
    "status.reconnecting": "Mất kết nối. Tự thử lại sau {s} giây (lần thứ {n})…",
    "status.reconnecting_now": "Mất kết nối. Đang kết nối lại (lần thứ {n})…",
    "status.error": "Không vào được phòng họp",
    "status.left": "Bạn đã rời cuộc họp",
    "status.ended": "Cuộc họp đã kết thúc",
    "status.rtt": "độ trễ {ms} ms",

    "reason.server_unreachable": "Không liên lạc được với máy chủ. Hãy kiểm tra dây mạng hoặc Wi-Fi của máy này.",
    "reason.media_failed": "Không nối được hình và tiếng tới máy chủ (có thể mạng hoặc tường lửa đang chặn).",
    "reason.link_lost": "Đường truyền tới máy chủ bị ngắt.",
    "reason.server_restart": "Máy chủ đang khởi động lại.",
    "reason.offline": "Máy này đang mất mạng. Hãy kiểm tra dây mạng hoặc Wi-Fi.",

    "err.title": "Không vào được phòng họp",
    "err.title.replaced": "Cửa sổ này đã dừng",
    "err.title.removed": "Điểm cầu đã bị mời ra khỏi cuộc họp",
    "status.replaced": "Đang họp ở cửa sổ khác",
    "status.removed": "Đã bị mời ra khỏi cuộc họp",
    "err.auth_missing": "Đường link thiếu mã vào phòng. Hãy mở đúng và đủ đường link mà trung tâm tỉnh đã gửi.",
    "err.auth_invalid": "Đường link không đúng (có thể bị cắt ngắn hoặc sao chép thiếu). Hãy sao chép lại toàn bộ đường link, hoặc xin đường link mới từ trung tâm tỉnh.",
    "err.auth_expired": "Đường link đã hết hạn. Hãy xin đường link mới từ trung tâm tỉnh.",
    "err.meeting_not_found": "Không tìm thấy cuộc họp này (có thể đã kết thúc hoặc bị hủy). Hãy liên hệ trung tâm tỉnh.",
    "err.not_invited": "Điểm cầu này không có trong danh sách mời của cuộc họp. Hãy gọi cho trung tâm tỉnh để được thêm vào, rồi mở lại đường link.",
    "err.meeting_full": "Phòng họp đã đủ số điểm cầu. Máy sẽ tự thử vào lại; nếu mãi không vào được, hãy gọi cho trung tâm tỉnh.",
    "err.replaced": "Đường link này vừa được mở ở một cửa sổ hoặc một máy khác, nên cửa sổ này đã dừng. Nếu muốn họp ở đây, bấm “Họp tại cửa sổ này”.",
    "err.removed": "Trung tâm tỉnh đã mời điểm cầu này ra khỏi cuộc họp. Nếu cần vào lại, hãy gọi cho trung tâm tỉnh.",
    "err.meeting_ended": "Cuộc họp đã kết thúc. Cảm ơn đã tham dự.",
    "err.rate_limited": "Máy này gửi quá nhiều yêu cầu tới máy chủ. Máy sẽ tự thử lại sau ít phút.",
    "err.internal": "Máy chủ gặp sự cố. Máy sẽ tự thử lại; nếu lỗi kéo dài, hãy báo trung tâm tỉnh.",
    "err.protocol": "Có lỗi kỹ thuật khi trao đổi với máy chủ (mã lỗi: {code}). Máy sẽ tự thử lại. Nếu lỗi lặp lại, hãy tải lại trang (phím F5) hoặc dùng Google Chrome / Microsoft Edge bản mới, rồi báo trung tâm tỉnh mã lỗi này.",
    "err.unknown": "Có lỗi (mã lỗi: {code}). Hãy tải lại trang (phím F5); nếu vẫn lỗi, hãy báo trung tâm tỉnh mã lỗi này.",
    "err.no_webrtc": "Trình duyệt này không hỗ trợ họp trực tuyến. Hãy dùng Google Chrome, Microsoft Edge hoặc Firefox bản mới.",
    "err.wrong_page": "Đường link này dành cho điểm cầu, không dùng được cho bàn điều khiển trung tâm.",
    "err.code": "Mã lỗi: {code}",

    "notice.media_denied": "Trình duyệt đang chặn camera và micro, nên các điểm khác không thấy và không nghe bạn. Bấm vào biểu tượng camera hoặc ổ khóa ở thanh địa chỉ, chọn “Cho phép”, rồi tải lại trang (phím F5).",
    "notice.media_notfound": "Không tìm thấy camera hay micro nào. Hãy cắm thiết bị rồi tải lại trang (phím F5). Bạn vẫn xem và nghe được cuộc họp.",
    "notice.media_busy": "Camera hoặc micro đang bị phần mềm khác dùng (ví dụ Zalo, Zoom, Teams). Hãy tắt phần mềm đó rồi tải lại trang (phím F5).",
    "notice.media_insecure": "Trình duyệt chỉ cho dùng camera và micro khi trang được mở bằng địa chỉ https://. Hãy báo kỹ thuật viên của trung tâm tỉnh.",
    "notice.media_error": "Không mở được camera và micro ({detail}). Hãy tải lại trang (phím F5). Bạn vẫn xem và nghe được cuộc họp.",
    "notice.no_camera": "Không có camera: các điểm khác sẽ không thấy hình của bạn.",
    "notice.no_mic": "Không có micro: các điểm khác sẽ không nghe được tiếng của bạn.",
    "notice.autoplay": "Trình duyệt đang tắt tiếng cuộc họp. Bấm nút bên cạnh để nghe.",
    "notice.server_error": "Máy chủ báo lỗi: {message}",
    "notice.dismiss": "Ẩn thông báo",

    "btn.mic_off": "Tắt micro",
    "btn.mic_on": "Bật micro",
    "btn.cam_off": "Tắt camera",
    "btn.cam_on": "Bật camera",
    "btn.leave": "Rời cuộc họp",
    "btn.rejoin": "Vào lại cuộc họp",
    "btn.retry": "Thử lại",
    "btn.retry_now": "Thử lại ngay",
    "btn.take_over": "Họp tại cửa sổ này",
    "btn.open_site": "Mở trang điểm cầu",
    "btn.fullscreen": "Toàn màn hình",
    "btn.enable_sound": "Bấm để nghe tiếng",
    "btn.no_mic": "Không có micro",
    "btn.no_cam": "Không có camera",

    "state.mic_muted": "Micro đang tắt — các điểm khác không nghe bạn",
    "state.cam_off": "Camera đang tắt",

    "stage.empty": "Chưa có điểm cầu nào khác phát hình. Hình sẽ hiện ở đây khi có điểm cầu vào họp.",
    "stage.label": "Hình các điểm cầu",
    "stage.thumbs": "Các điểm cầu khác",
    "stage.cam_off": "Đã tắt camera",
    "stage.muted": "Đã tắt micro",
    "self.title": "Hình của bạn",
    "self.you": "Bạn",
    "self.no_camera": "Không có camera",

    "roster.title": "Các điểm cầu đang họp",
    "roster.count_sites": "{n} điểm cầu đã vào họp",
    "roster.count_all": "{n} người tham dự (kể cả bạn)",
    "roster.empty": "Chưa có ai khác trong phòng.",
    "roster.col.name": "Tên · vai trò · mã điểm",
    "roster.col.site": "Mã điểm",
    "roster.col.role": "Vai trò",
    "roster.col.mic": "Micro",
    "roster.col.cam": "Camera",
    "roster.col.joined": "Vào lúc",
    "roster.on": "Bật",
    "roster.off": "Tắt",
    "roster.none": "Không có",
    "roster.before": "trước {time}",
    "roster.you": "(bạn)",
    "role.hub": "Trung tâm tỉnh",
    "role.operator": "Điều hành",
    "role.site": "Điểm cầu",

    "noscript": "Trang này cần bật JavaScript. Hãy dùng Google Chrome hoặc Microsoft Edge bản mới.",
  },

  en: {
    "app.title": "Video conference",
    "page.site": "Site",
    "page.hub": "Hub console",
    "page.title.site": "Video conference — Site",
    "page.title.hub": "Video conference — Provincial hub",
    "lang.label": "Language",
    "lang.vi": "Tiếng Việt",
    "lang.en": "English",

    "status.connecting": "Connecting to the server…",
    "status.media": "Opening camera and microphone…",
    "status.joining": "Joining the meeting…",
    "status.joined": "In the meeting, connecting sound and video…",
    "status.connected": "Connected — meeting in progress",
    "status.reconnecting": "Connection lost. Retrying in {s} s (attempt {n})…",
    "status.reconnecting_now": "Connection lost. Reconnecting (attempt {n})…",
    "status.error": "Could not join the meeting",
    "status.left": "You have left the meeting",
    "status.ended": "The meeting has ended",
    "status.rtt": "delay {ms} ms",

    "reason.server_unreachable": "Cannot reach the server. Check this computer's network cable or Wi-Fi.",
    "reason.media_failed": "Sound and video could not get through to the server (the network or a firewall may be blocking them).",
    "reason.link_lost": "The link to the server was cut.",
    "reason.server_restart": "The server is restarting.",
    "reason.offline": "This computer is offline. Check the network cable or Wi-Fi.",

    "err.title": "Could not join the meeting",
    "err.title.replaced": "This window has stopped",
    "err.title.removed": "This site was removed from the meeting",
    "status.replaced": "In use in another window",
    "status.removed": "Removed from the meeting",
    "err.auth_missing": "The link is missing its access code. Open the exact, complete link the provincial hub sent you.",
    "err.auth_invalid": "This link is not valid (it may be cut short or copied incompletely). Copy the whole link again, or ask the provincial hub for a new link.",
    "err.auth_expired": "This link has expired. Ask the provincial hub for a new link.",
    "err.meeting_not_found": "This meeting was not found (it may have ended or been cancelled). Contact the provincial hub.",
    "err.not_invited": "This site is not on the meeting's invitation list. Call the provincial hub to be added, then open the link again.",
    "err.meeting_full": "The meeting is full. We will keep trying to get in; if it never works, call the provincial hub.",
    "err.replaced": "This link was just opened in another window or on another computer, so this window stopped. To take part here, press “Use this window”.",
    "err.removed": "The provincial hub removed this site from the meeting. If you need to rejoin, call the provincial hub.",
    "err.meeting_ended": "The meeting has ended. Thank you for attending.",
    "err.rate_limited": "This computer sent too many requests to the server. We will retry in a few minutes.",
    "err.internal": "The server ran into a problem. We will keep retrying; if it lasts, tell the provincial hub.",
    "err.protocol": "A technical error happened while talking to the server (error code: {code}). We will retry. If it keeps happening, reload the page (F5 key) or use a recent Google Chrome / Microsoft Edge, and give this error code to the provincial hub.",
    "err.unknown": "Something went wrong (error code: {code}). Reload the page (F5 key); if it still fails, give this error code to the provincial hub.",
    "err.no_webrtc": "This browser cannot take part in video meetings. Use a recent Google Chrome, Microsoft Edge or Firefox.",
    "err.wrong_page": "This link is for a site; it cannot be used for the hub console.",
    "err.code": "Error code: {code}",

    "notice.media_denied": "The browser is blocking the camera and microphone, so other sites cannot see or hear you. Click the camera or padlock icon in the address bar, choose “Allow”, then reload the page (F5 key).",
    "notice.media_notfound": "No camera or microphone was found. Plug one in and reload the page (F5 key). You can still see and hear the meeting.",
    "notice.media_busy": "The camera or microphone is being used by another program (for example Zalo, Zoom, Teams). Close that program and reload the page (F5 key).",
    "notice.media_insecure": "The browser only allows the camera and microphone on pages opened with an https:// address. Tell the provincial hub's technician.",
    "notice.media_error": "Could not open the camera and microphone ({detail}). Reload the page (F5 key). You can still see and hear the meeting.",
    "notice.no_camera": "No camera: other sites will not see you.",
    "notice.no_mic": "No microphone: other sites will not hear you.",
    "notice.autoplay": "The browser has muted the meeting. Press the button next to this message to hear it.",
    "notice.server_error": "The server reported a problem: {message}",
    "notice.dismiss": "Hide this message",

    "btn.mic_off": "Mute microphone",
    "btn.mic_on": "Unmute microphone",
    "btn.cam_off": "Turn camera off",
    "btn.cam_on": "Turn camera on",
    "btn.leave": "Leave meeting",
    "btn.rejoin": "Rejoin the meeting",
    "btn.retry": "Try again",
    "btn.retry_now": "Retry now",
    "btn.take_over": "Use this window",
    "btn.open_site": "Open the site page",
    "btn.fullscreen": "Full screen",
    "btn.enable_sound": "Press to hear the meeting",
    "btn.no_mic": "No microphone",
    "btn.no_cam": "No camera",

    "state.mic_muted": "Microphone is off — other sites cannot hear you",
    "state.cam_off": "Camera is off",

    "stage.empty": "No other site is sending video yet. It will appear here when a site joins.",
    "stage.label": "Video from the sites",
    "stage.thumbs": "Other sites",
    "stage.cam_off": "Camera off",
    "stage.muted": "Microphone off",
    "self.title": "Your video",
    "self.you": "You",
    "self.no_camera": "No camera",

    "roster.title": "Sites in the meeting",
    "roster.count_sites": "Sites joined: {n}",
    "roster.count_all": "Participants, including you: {n}",
    "roster.empty": "Nobody else is in the meeting yet.",
    "roster.col.name": "Name · role · site ID",
    "roster.col.site": "Site ID",
    "roster.col.role": "Role",
    "roster.col.mic": "Mic",
    "roster.col.cam": "Camera",
    "roster.col.joined": "Joined at",
    "roster.on": "On",
    "roster.off": "Off",
    "roster.none": "None",
    "roster.before": "before {time}",
    "roster.you": "(you)",
    "role.hub": "Provincial hub",
    "role.operator": "Operator",
    "role.site": "Site",

    "noscript": "This page needs JavaScript. Use a recent Google Chrome or Microsoft Edge.",
  },
};

function storedLang() {
  try {
    const v = localStorage.getItem(STORAGE_KEY);
    return LANGS.includes(v) ? v : null;
  } catch {
    return null; // storage disabled (private mode, policy): fall back silently
  }
}

let current = storedLang() || DEFAULT_LANG;
const listeners = new Set();

export function getLang() {
  return current;
}

export function setLang(lang) {
  if (!LANGS.includes(lang) || lang === current) return;
  current = lang;
  try {
    localStorage.setItem(STORAGE_KEY, lang);
  } catch {
    /* not remembered, still applied */
  }
  applyI18n(document);
  for (const fn of listeners) fn(lang);
}

/** Call fn(lang) after every language change (to re-render dynamic text). */
export function onLangChange(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

export function hasKey(key) {
  return Object.prototype.hasOwnProperty.call(STRINGS[current], key);
}

export function t(key, params = {}) {
  let s = STRINGS[current][key];
  if (s === undefined) s = STRINGS[DEFAULT_LANG][key];
  if (s === undefined) return key;
  return s.replace(/\{(\w+)\}/g, (m, name) => (name in params ? String(params[name]) : m));
}

/** Fill data-i18n* attributes under root and set <html lang>. */
export function applyI18n(root = document) {
  document.documentElement.lang = current;
  for (const el of root.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of root.querySelectorAll("[data-i18n-title]")) {
    const s = t(el.dataset.i18nTitle);
    el.title = s;
    el.setAttribute("aria-label", s);
  }
  for (const el of root.querySelectorAll("[data-i18n-placeholder]")) el.placeholder = t(el.dataset.i18nPlaceholder);
  for (const el of root.querySelectorAll("[data-lang]")) el.setAttribute("aria-pressed", String(el.dataset.lang === current));
}

/** Wire buttons carrying data-lang="vi|en" to switch the language. */
export function bindLangButtons(root = document) {
  for (const el of root.querySelectorAll("[data-lang]")) {
    el.addEventListener("click", () => setLang(el.dataset.lang));
  }
}

export function formatTime(date) {
  return date.toLocaleTimeString(current === "vi" ? "vi-VN" : "en-GB", {
    hour: "2-digit",
    minute: "2-digit",
    second: "2-digit",
  });
}
