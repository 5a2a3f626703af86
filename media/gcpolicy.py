"""When Python's cyclic garbage collector may make a full pass in a media worker.

A full pass walks every container object the process holds, with the forwarding path
stopped. A worker serving 80 sites holds ~140,000 (mostly aiortc's per-site objects:
transceivers, parameters, events); a full pass took 100-250 ms on this project's 2-core
machine and came about every 20 s. Every receiver of that worker then saw a frame gap over
200 ms, which WebRTC's stats count as a freeze. In a steady meeting those passes found
nothing: 0 objects collected over the measured windows (loadtest rehearsals at 164 sites).
Cyclic garbage appears when sites leave (aiortc's peer-connection graph is full of cycles).

So, in worker processes: once joins settle, everything alive is moved out of the
collector's sight (`gc.freeze`); once leaves settle, it is put back (`gc.unfreeze`), one
full pass collects what the departed sites left, and what is alive is frozen again. Young
objects are collected as usual all along; objects whose last reference goes away are freed
at once whether frozen or not (reference counting does not look at generations).
"""

from __future__ import annotations

import asyncio
import gc
from typing import Optional

JOIN_SETTLE_S = 2.0  # after the last join, freeze (a storm of 164 joins: once at its end)
LEAVE_SETTLE_S = 5.0  # after the last leave, one full pass, then freeze again


class CollectorPolicy:
    def __init__(self) -> None:
        self.enabled = False
        self.freezes = 0
        self.sweeps = 0
        self._dirty = False  # sites left since the last sweep: cyclic garbage may be frozen
        self._handle: Optional[asyncio.TimerHandle] = None

    def enable(self) -> None:
        self.enabled = True

    def joined(self) -> None:
        self._schedule(JOIN_SETTLE_S)

    def left(self) -> None:
        self._dirty = True
        self._schedule(LEAVE_SETTLE_S)


    def _schedule(self, delay: float) -> None:
        if not self.enabled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._handle is not None:
            self._handle.cancel()
        self._handle = loop.call_later(delay, self.settle)

    def settle(self) -> None:
        """Sweep what departed sites left (if any did), then freeze what is alive."""
        self._handle = None
        if self._dirty:
            gc.unfreeze()
            gc.collect()
            self._dirty = False
            self.sweeps += 1
        gc.freeze()
        self.freezes += 1


POLICY = CollectorPolicy()
