"""Who is speaking: loudest-K audio and a dominant speaker that a cough does not change.

Input is the ssrc-audio-level header extension (RFC 6464: 0..127 = 0..-127 dBov) that
every browser puts on its Opus packets, accumulated per published audio track by the packet
path (two additions per packet, no decoding). Every 200 ms the detector turns the window
into a loudness (dB above -127 dBov) and a speech flag, keeps a ~1.5 s history per site, and:
- ranks sites by smoothed loudness for the loudest-K audio slots (a silent site drops out
  after its loudness decays, so a pause between sentences does not reshuffle slots);
- replaces the dominant speaker only when a challenger has been speaking for most of the
  last second, and either the current one has stopped (speech in at most one of its last
  five windows: a handover takes about a second) or, while both talk, the challenger is
  clearly ahead over the last 3 s: five windows more of speech out of fifteen, or as much
  speech and 6 dB louder while speaking. A new dominant speaker holds for at least 2 s.
  Short noises (a cough, a door) never qualify; people talking over each other, pausing
  between sentences, do not flip the stage (with "one window more of speech in 1.6 s", four
  such talkers changed the stage at every 2 s hold, each change a keyframe for every
  receiver).
Only sites that are speaking (`audible`: speech in the last ~1.6 s, or still loud) compete
for audio slots when there are more publishers than slots: silent sites never shuffle them.
A site holding a slot keeps it while it is audible (`audio_key`): the pauses between words
and sentences (DTX sends nothing, so one quiet window drops the smoothed loudness by a
third) must not hand its slot to a fourth talker and back (at 20 sites with four talkers
that was ~1.5 audio switches a second per receiver).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from .producer import Producer

WINDOW_S = 0.2
HISTORY = 8  # windows (1.6 s): a site that spoke within them is audible
LONG = 15  # windows kept (3 s): who talks more, when two talk at once
SPEECH_DBOV = -50  # louder than this counts as speech (typical speech -20..-40, room noise < -60)
CHALLENGE_WINDOWS = 5  # the challenger must speak in >= this many of the last windows (~1 s)
SMOOTHING = 0.35
MIN_HOLD_WINDOWS = 10  # a new dominant speaker keeps the stage for at least ~2 s
SWITCH_MARGIN_DB = 6.0  # ... and, while it talks, replaced only by someone clearly louder
SWITCH_MARGIN_WINDOWS = 5  # ... or speaking in this many more of the last LONG windows
STOPPED_WINDOWS = 1  # speech in at most this many of the last CHALLENGE_WINDOWS: stopped


class SpeakerDetector:
    def __init__(self) -> None:
        self.dominant: Optional[str] = None  # participant id
        self.loudness: dict[str, float] = {}  # participant id -> smoothed dB above -127 dBov
        self._speech: dict[str, deque] = {}
        self._loud: dict[str, deque] = {}  # per window, unsmoothed (0 for a silent window)
        self.changes = 0
        #: sites worth an audio slot now: speech in the last HISTORY windows, or still loud on
        #: average (a pause between sentences). Silent sites never take (or shuffle) the slots.
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
            hist = self._speech.setdefault(pid, deque(maxlen=LONG))
            hist.append(loud >= 127 + SPEECH_DBOV)
            self._loud.setdefault(pid, deque(maxlen=LONG)).append(loud)
        for pid in list(self.loudness):
            if pid not in seen:
                del self.loudness[pid]
                self._speech.pop(pid, None)
                self._loud.pop(pid, None)
                if self.dominant == pid:
                    self.dominant = None
        quiet = 127.0 + SPEECH_DBOV - 20
        self.audible = {pid for pid in self._speech if self._activity(pid, HISTORY) or self.loudness.get(pid, 0.0) > quiet}
        return self._decide()

    def audio_key(self, pid: str, held: bool) -> tuple[bool, bool]:
        """Group of a site among one receiver's loudest-K candidates (a stable sort of a
        loudest-first list by it): the dominant speaker first, then sites already in one
        of its audio slots that are still audible (they keep them through pauses), then the
        rest. Only the dominant speaker displaces a holder."""
        return (pid != self.dominant, not (held and pid in self.audible))

    def _activity(self, pid: str, windows: int) -> int:
        hist = self._speech.get(pid)
        if not hist:
            return 0
        return sum(list(hist)[-windows:])

    def _speaking_loudness(self, pid: str) -> float:
        """Mean loudness over the windows with speech in the last LONG (pauses excluded)."""
        loud = [x for x, sp in zip(self._loud.get(pid, ()), self._speech.get(pid, ())) if sp]
        return sum(loud) / len(loud) if loud else 0.0

    def _decide(self) -> bool:
        best, best_key = None, (-1, -1.0)
        for pid in self.loudness:
            if pid == self.dominant:
                continue
            if self._activity(pid, CHALLENGE_WINDOWS) < CHALLENGE_WINDOWS - 1:
                continue
            key = (self._activity(pid, LONG), self._speaking_loudness(pid))
            if key > best_key:
                best, best_key = pid, key
        if best is None:
            return False
        cur = self.dominant
        if cur is not None:
            if self._windows_since_change < MIN_HOLD_WINDOWS:
                return False  # a new speaker keeps the stage a moment
            stopped = self._activity(cur, CHALLENGE_WINDOWS) <= STOPPED_WINDOWS
            active = self._activity(cur, LONG)
            ahead = best_key[0] >= active + SWITCH_MARGIN_WINDOWS or (
                best_key[0] >= active and best_key[1] >= self._speaking_loudness(cur) + SWITCH_MARGIN_DB
            )
            if not (stopped or ahead):
                return False  # two people talking over each other do not flip the stage
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
