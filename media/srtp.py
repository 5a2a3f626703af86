"""SRTP protect/unprotect straight on libsrtp, around pylibsrtp's Session objects.

pylibsrtp's Session.protect insists on `bytes` (a bytearray must be copied first), checks
types on every call and has a 1500-byte buffer that refuses RTP over ~1356 bytes, which an
RTX-wrapped full-size packet can exceed. These wrappers reuse the key state that aiortc's
DTLS handshake put into the Session and call libsrtp with their own 2 KiB buffer: one copy
in, one copy out, no checks beyond the libsrtp status code.
"""

from __future__ import annotations

from pylibsrtp import Session
from pylibsrtp._binding import ffi, lib

_BUF = 2048
_TRAILER = 144  # SRTP_MAX_TRAILER_LEN


class SrtpError(Exception):
    pass


class SrtpContext:
    """One direction of SRTP for a transport (aiortc's _tx_srtp or _rx_srtp)."""

    __slots__ = ("_session", "_srtp", "_cdata", "_buf", "_len")

    def __init__(self, session: Session) -> None:
        self._session = session  # keep the libsrtp context alive
        self._srtp = session._srtp[0]
        self._cdata = ffi.new("char[]", _BUF)
        self._buf = ffi.buffer(self._cdata)
        self._len = ffi.new("int *")

    def protect(self, data: bytes | bytearray) -> bytes:
        n = len(data)
        if n > _BUF - _TRAILER:
            raise SrtpError("packet too long")
        self._buf[0:n] = data
        self._len[0] = n
        if lib.srtp_protect(self._srtp, self._cdata, self._len):
            raise SrtpError("srtp_protect failed")
        return self._buf[0 : self._len[0]]

    def protect_rtcp(self, data: bytes | bytearray) -> bytes:
        n = len(data)
        if n > _BUF - _TRAILER:
            raise SrtpError("packet too long")
        self._buf[0:n] = data
        self._len[0] = n
        if lib.srtp_protect_rtcp(self._srtp, self._cdata, self._len):
            raise SrtpError("srtp_protect_rtcp failed")
        return self._buf[0 : self._len[0]]

    def unprotect(self, data: bytes) -> bytes | None:
        """Decrypt and authenticate; None for a packet that fails (replay, bad tag, garbage)."""
        n = len(data)
        if n > _BUF:
            return None
        self._buf[0:n] = data
        self._len[0] = n
        if lib.srtp_unprotect(self._srtp, self._cdata, self._len):
            return None
        return self._buf[0 : self._len[0]]

    def unprotect_rtcp(self, data: bytes) -> bytes | None:
        n = len(data)
        if n > _BUF:
            return None
        self._buf[0:n] = data
        self._len[0] = n
        if lib.srtp_unprotect_rtcp(self._srtp, self._cdata, self._len):
            return None
        return self._buf[0 : self._len[0]]
