"""Which per-copy forwarding path runs: the native one (media/_fastpath.c) or Python.

The native module is built by `pip install` when a C compiler is present (setup.py) and is
used unless HOINGHI_NATIVE=0. It implements exactly what Consumer._write_py,
WebRtcTransport._send_rtp_py/_send_now_py and the Python `fanout` below do, on the same
attributes (tests/media/test_fastpath.py feeds both the same packets and compares the bytes
on the wire); the slow paths (a switch at a keyframe, the temporal-layer filter, late
packets, the pacer's queue) stay in Python and are called from C when a packet needs them.

Without the native module the base classes are empty and Python does everything.
"""

from __future__ import annotations

import logging
import os
from typing import Any

logger = logging.getLogger(__name__)

NATIVE = False
if os.environ.get("HOINGHI_NATIVE", "1") != "0":
    try:
        from ._fastpath import ConsumerCore, SendCore, fanout, set_latency_bounds  # type: ignore[attr-defined]
        from .timing import LATENCY_BOUNDS_S

        set_latency_bounds(LATENCY_BOUNDS_S)
        NATIVE = True
    except ImportError:  # not built (no compiler at install time)
        logger.info("native forwarding path not built; using the Python path")

if not NATIVE:

    class ConsumerCore:  # type: ignore[no-redef]
        """Python stand-in: Consumer keeps its fields in its own __dict__."""

    class SendCore:  # type: ignore[no-redef]
        """Python stand-in: WebRtcTransport keeps its fields in its own __dict__."""

        direct = False

    def fanout(info: Any, sinks: list, stream: Any, now: float) -> None:  # type: ignore[no-redef]
        for sink in sinks:
            sink.write(info, stream, now)


def srtp_addresses(session: Any) -> tuple[int, int]:
    """(libsrtp context, srtp_protect) of a pylibsrtp Session, as integers for the native
    path: taken from pylibsrtp's own cffi binding, so the extension needs no libsrtp to
    link against and uses the very library that holds the keys."""
    from pylibsrtp._binding import ffi, lib

    ctx = int(ffi.cast("uintptr_t", session._srtp[0]))
    fn = int(ffi.cast("uintptr_t", ffi.addressof(lib, "srtp_protect")))
    return ctx, fn
