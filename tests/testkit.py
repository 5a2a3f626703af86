"""Helpers shared by the tests that drive real sites (importable: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import asyncio
import time
from typing import Callable

from loadtest.peer import SyntheticSite


async def until(predicate: Callable[[], object], timeout: float = 5.0, what: str = "condition", step: float = 0.1) -> None:
    """Wait for `predicate()` to be true; fail naming `what` if it is not within `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(step)
    raise AssertionError(f"{what}: not within {timeout} s")


async def chair(hub: SyntheticSite, action: str, timeout: float = 5.0, **fields) -> dict:
    """Send a chair action; return its chair_done, or the error it got (both carry its ref)."""
    ref = f"c{time.monotonic_ns()}"
    done = hub.wait_for("chair_done", timeout)
    err = hub.wait_for("error", timeout)
    await hub.send({"type": "chair", "action": action, "id": ref, **fields})
    finished, pending = await asyncio.wait([done, err], return_when=asyncio.FIRST_COMPLETED)
    for p in pending:
        p.cancel()
    msg = finished.pop().result()
    assert msg.get("ref") == ref, msg
    return msg
