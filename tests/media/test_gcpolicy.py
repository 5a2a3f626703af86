"""The media workers' garbage-collector policy (media/gcpolicy.py): what is alive after joins
is kept out of full passes, and what departed sites left in cycles is still collected."""

from __future__ import annotations

import asyncio
import gc
import weakref

from media.gcpolicy import CollectorPolicy


class _Node:
    """An object in a reference cycle: only the cyclic collector can free it."""

    def __init__(self) -> None:
        self.me = self


def test_frozen_cycles_are_swept_once_sites_leave():
    policy = CollectorPolicy()
    policy.enable()
    try:
        node = _Node()
        ref = weakref.ref(node)
        policy.settle()  # joins settled: everything alive is frozen
        del node
        gc.collect()
        assert ref() is not None  # out of the collector's sight: a full pass does not walk it
        policy.left()  # no running loop: nothing scheduled, only marked
        policy.settle()
        assert ref() is None  # unfrozen, swept, the living frozen again
        assert (policy.freezes, policy.sweeps) == (2, 1)
    finally:
        gc.unfreeze()


async def test_joins_and_leaves_settle_into_one_pass():
    policy = CollectorPolicy()
    policy.enable()
    try:
        import media.gcpolicy as gp

        gp_join, gp_leave = gp.JOIN_SETTLE_S, gp.LEAVE_SETTLE_S
        gp.JOIN_SETTLE_S, gp.LEAVE_SETTLE_S = 0.05, 0.1
        for _ in range(5):
            policy.joined()
        await asyncio.sleep(0.15)
        assert (policy.freezes, policy.sweeps) == (1, 0)  # a storm of joins: one freeze
        for _ in range(3):
            policy.left()
        await asyncio.sleep(0.05)
        assert policy.sweeps == 0  # still settling
        await asyncio.sleep(0.15)
        assert (policy.freezes, policy.sweeps) == (2, 1)
    finally:
        gp.JOIN_SETTLE_S, gp.LEAVE_SETTLE_S = gp_join, gp_leave
        gc.unfreeze()
