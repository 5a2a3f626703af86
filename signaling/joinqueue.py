"""Join pacing: a storm of sites joining at once is let in at a steady pace, never refused.

When a meeting starts, 164 sites open their links within seconds. Signaling a join is cheap
(a token check, a SQLite read); what is not is the media set-up behind an offer: a peer
connection with its certificate, ICE gathering (sockets), then the ICE checks and the DTLS
handshake. Done all at once, those starve the event loop that forwards everyone else's
packets, handshakes time out and sites retry, which makes the storm worse.

So offers take a turn: at most `concurrency` set-ups in flight and at most `rate` starts
per second; a set-up holds its turn until its media connects (or `hold_s` passes), so the
handshakes are paced too, not only the SDP work. The others wait in arrival order and are
told their place (`queued`, docs/protocol.md), which the site's page shows. Waiting is
the only answer: no legitimate join is refused for a storm (abuse is the per-connection
message rate limit's business, signaling/limits.py).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Awaitable, Callable, Optional

#: defaults: 164 sites in ~7 s at 25/s; twelve set-ups at once keep a 2-core server responsive
CONCURRENCY = 12
RATE_PER_S = 25.0
HOLD_S = 3.0  # longest a connected-or-not set-up keeps its turn after the answer
NOTIFY_EVERY_S = 0.5  # a waiting site hears its new place at most this often

PositionListener = Callable[[int], None]


class _Waiter:
    __slots__ = ("future", "notify", "told")

    def __init__(self, future: asyncio.Future, notify: Optional[PositionListener]) -> None:
        self.future = future
        self.notify = notify
        self.told = 0  # last place told (1 = next)


class JoinQueue:
    def __init__(self, concurrency: int = CONCURRENCY, rate: float = RATE_PER_S, hold_s: float = HOLD_S) -> None:
        self.concurrency = max(1, concurrency)
        self.rate = rate
        self.hold_s = hold_s
        self.in_flight = 0
        self._waiting: deque[_Waiter] = deque()
        self._next_start = 0.0  # monotonic time the next start is allowed (rate)
        self._wake: Optional[asyncio.TimerHandle] = None
        self._notify_timer: Optional[asyncio.TimerHandle] = None
        # figures for logs, /healthz and tests
        self.started = 0
        self.queued_total = 0
        self.max_waiting = 0
        self.max_wait_s = 0.0

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def acquire(self, notify: Optional[PositionListener] = None) -> None:
        """Wait for a turn; `notify(place)` is called when queued and as the place moves.
        Cancelling the wait (the site left) gives the place up."""
        if not self._waiting and self._may_start(time.monotonic()):
            self._start()
            return
        fut = asyncio.get_running_loop().create_future()
        w = _Waiter(fut, notify)
        self._waiting.append(w)
        self.queued_total += 1
        self.max_waiting = max(self.max_waiting, len(self._waiting))
        t0 = time.monotonic()
        if notify is not None:
            w.told = len(self._waiting)
            notify(w.told)
        self._pump()
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # the turn was granted just as the wait was cancelled
            else:
                try:
                    self._waiting.remove(w)
                except ValueError:
                    pass
                self._notify_soon()
            raise
        self.max_wait_s = max(self.max_wait_s, time.monotonic() - t0)

    def release(self) -> None:
        self.in_flight = max(0, self.in_flight - 1)
        self._pump()

    def hold_until(self, done: Awaitable, timeout: Optional[float] = None) -> None:
        """Keep the turn until `done` completes (the media connected) or the hold time
        passes, then release it; runs in the background."""

        async def wait() -> None:
            try:
                await asyncio.wait_for(done, self.hold_s if timeout is None else timeout)
            except (asyncio.TimeoutError, Exception):
                pass
            finally:
                self.release()

        asyncio.get_running_loop().create_task(wait())

    # ---------------------------------------------------------------- internals

    def _may_start(self, now: float) -> bool:
        return self.in_flight < self.concurrency and now >= self._next_start

    def _start(self) -> None:
        now = time.monotonic()
        self.in_flight += 1
        self.started += 1
        if self.rate > 0:
            self._next_start = max(now, self._next_start) + 1.0 / self.rate

    def _pump(self) -> None:
        """Grant turns to the head of the queue while capacity and rate allow."""
        moved = False
        now = time.monotonic()
        while self._waiting and self._may_start(now):
            w = self._waiting.popleft()
            if w.future.done():  # cancelled while queued
                continue
            self._start()
            w.future.set_result(None)
            moved = True
        if self._waiting and self.in_flight < self.concurrency and self._wake is None:
            # capacity is free but the rate says wait: come back when it allows a start
            delay = max(0.0, self._next_start - now)
            self._wake = asyncio.get_running_loop().call_later(delay, self._woken)
        if moved:
            self._notify_soon()

    def _woken(self) -> None:
        self._wake = None
        self._pump()

    def _notify_soon(self) -> None:
        if self._notify_timer is None and self._waiting:
            self._notify_timer = asyncio.get_running_loop().call_later(NOTIFY_EVERY_S, self._notify)

    def _notify(self) -> None:
        """Tell every waiting site whose place changed (coalesced: at most every 0.5 s)."""
        self._notify_timer = None
        for place, w in enumerate(self._waiting, start=1):
            if w.notify is not None and w.told != place and not w.future.done():
                w.told = place
                w.notify(place)

    def snapshot(self) -> dict:
        return {
            "in_flight": self.in_flight,
            "waiting": len(self._waiting),
            "started": self.started,
            "queued_total": self.queued_total,
            "max_waiting": self.max_waiting,
            "max_wait_s": round(self.max_wait_s, 2),
        }
