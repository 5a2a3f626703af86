"""Who is speaking: loudest-K audio and a dominant speaker that a cough does not change.

Input is the ssrc-audio-level header extension (RFC 6464: 0..127 = 0..-127 dBov) that
every browser puts on its Opus packets, accumulated per published audio track by the packet
path (two additions per packet, no decoding). Every 200 ms the detector turns the window
into a loudness (dB above -127 dBov) and a speech flag, keeps a ~1.5 s history per site, and:
- ranks sites by smoothed loudness for the loudest-K audio slots (a silent site drops out
  after its loudness decays, so a pause between sentences does not reshuffle slots);
- replaces the dominant speaker only when a challenger has been speaking for most of the
  last second *and* more than the current one over the last 1.5 s: short noises (a cough,
  a door) never reach that, continuous speech does within about a second; a new dominant
  speaker holds for at least 2 s and is replaced only by someone clearly ahead (6 dB or a
  window more of speech), so two people talking over each other do not flip the stage.
Only sites that are speaking (`audible`) compete for audio slots when there are more
publishers than slots: silent sites never shuffle them.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from .producer import Producer

WINDOW_S = 0.2
HISTORY = 8  # windows kept (1.6 s)
SPEECH_DBOV = -50  # louder than this counts as speech (typical speech -20..-40, room noise < -60)
CHALLENGE_WINDOWS = 5  # the challenger must speak in >= this many of the last windows (~1 s)
SMOOTHING = 0.35
MIN_HOLD_WINDOWS = 10  # a new dominant speaker keeps the stage for at least ~2 s
SWITCH_MARGIN_DB = 6.0  # ... and is replaced only by someone clearly louder or more active


class SpeakerDetector:
    def __init__(self) -> None:
        self.dominant: Optional[str] = None  # participant id
        self.loudness: dict[str, float] = {}  # participant id -> smoothed dB above -127 dBov
        self._speech: dict[str, deque] = {}
        self.changes = 0
        #: sites worth an audio slot now: speaking in the last window, or still loud on average
        #: (a pause between sentences). Silent sites never take (or shuffle) the loudest-K slots.
        self.audible: set[str] = set()
        self._windows_since_change = 1 << 30

    def update(self, producers: list["Producer"]) -> bool:
        """Fold one window of audio levels in; True if the dominant speaker changed."""
        self._windows_since_change += 1
        seen = set()
        for p in producers:
            pid = p.participant_id
            seen.add(pid)
            if p.level_n:
                mean_level = p.level_sum / p.level_n  # 0 loud .. 127 silent
                p.level_sum = 0
                p.level_n = 0
                loud = 127.0 - mean_level
            else:
                loud = 0.0  # no packets (muted, DTX): silence
            prev = self.loudness.get(pid, 0.0)
            self.loudness[pid] = prev + (loud - prev) * SMOOTHING
            hist = self._speech.setdefault(pid, deque(maxlen=HISTORY))
            hist.append(loud >= 127 + SPEECH_DBOV)
        for pid in list(self.loudness):
            if pid not in seen:
                del self.loudness[pid]
                self._speech.pop(pid, None)
                if self.dominant == pid:
                    self.dominant = None
        quiet = 127.0 + SPEECH_DBOV - 20
        self.audible = {pid for pid, hist in self._speech.items() if (hist and hist[-1]) or self.loudness.get(pid, 0.0) > quiet}
        return self._decide()

    def _activity(self, pid: str, windows: int) -> int:
        hist = self._speech.get(pid)
        if not hist:
            return 0
        return sum(list(hist)[-windows:])

    def _decide(self) -> bool:
        best, best_score = None, -1
        for pid in self.loudness:
            if pid == self.dominant:
                continue
            recent = self._activity(pid, CHALLENGE_WINDOWS)
            if recent < CHALLENGE_WINDOWS - 1:
                continue
            score = self._activity(pid, HISTORY) * 100 + self.loudness[pid]
            if score > best_score:
                best, best_score = pid, score
        if best is None:
            if self.dominant is None and self.loudness:
                return False
            return False
        if self.dominant is not None:
            if self._windows_since_change < MIN_HOLD_WINDOWS:
                return False  # two people talking over each other do not flip the stage
            current = self._activity(self.dominant, HISTORY) * 100 + self.loudness.get(self.dominant, 0.0)
            if current + SWITCH_MARGIN_DB >= best_score:
                return False
        self.dominant = best
        self.changes += 1
        self._windows_since_change = 0
        return True

    def loudest(self, k: int) -> list[str]:
        """Participant ids of the k loudest sites, the dominant speaker always among them."""
        order = sorted(self.loudness, key=lambda pid: -self.loudness[pid])
        if self.dominant is not None and self.dominant in order:
            order.remove(self.dominant)
            order.insert(0, self.dominant)
        quiet = 127.0 + SPEECH_DBOV - 20  # below -70 dBov: room noise, not a voice
        return [pid for pid in order if self.loudness.get(pid, 0.0) > quiet or pid == self.dominant][:k]
