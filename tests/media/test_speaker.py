"""Dominant speaker and loudest-K from ssrc-audio-level values (RFC 6464), window by window."""

from __future__ import annotations

from media.speaker import WINDOW_S, SpeakerDetector


class Track:
    """What the packet path leaves on a Producer: a sum and count of audio-level values."""

    def __init__(self, pid: str) -> None:
        self.participant_id = pid
        self.level_sum = 0
        self.level_n = 0

    def speak(self, dbov: int, packets: int = 10) -> None:  # 10 x 20 ms packets per window
        self.level_sum += -dbov * packets
        self.level_n += packets


def run(detector: SpeakerDetector, tracks: list[Track], script, seconds: float) -> list:
    """script(t) -> {pid: dBov or None (silent)}; returns the dominant speaker per window."""
    out = []
    t = 0.0
    while t < seconds:
        levels = script(t)
        for tr in tracks:
            lvl = levels.get(tr.participant_id)
            tr.speak(lvl if lvl is not None else -110)
        detector.update(tracks)
        out.append(detector.dominant)
        t += WINDOW_S
    return out


def test_continuous_speech_takes_over_within_about_a_second():
    d = SpeakerDetector()
    a, b, c = Track("a"), Track("b"), Track("c")
    run(d, [a, b, c], lambda t: {"a": -25}, 3.0)
    assert d.dominant == "a"
    history = run(d, [a, b, c], lambda t: {"b": -28}, 3.0)
    switch = history.index("b") * WINDOW_S
    assert 0.6 <= switch <= 1.6, history
    assert d.dominant == "b" and d.changes == 2


def test_a_cough_does_not_switch_the_speaker():
    d = SpeakerDetector()
    a, b = Track("a"), Track("b")
    run(d, [a, b], lambda t: {"a": -30}, 3.0)
    # b coughs loudly for 0.4 s while a keeps talking
    history = run(d, [a, b], lambda t: {"a": -30, "b": -10 if t < 0.4 else None}, 3.0)
    assert set(history) == {"a"}


def test_loudest_k_puts_the_dominant_first_and_drops_silence():
    d = SpeakerDetector()
    tracks = [Track(x) for x in "abcde"]
    run(d, tracks, lambda t: {"a": -20, "b": -35, "c": -45, "d": -30}, 3.0)
    assert d.loudest(3)[0] == d.dominant
    assert set(d.loudest(3)) == {"a", "d", "b"}
    assert "e" not in d.loudest(5)  # silent sites take no audio slot
