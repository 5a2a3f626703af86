"""VP8 RTP payload descriptor (RFC 7741 section 4.2): read once, rewrite in place.

The SFU never decodes VP8. It needs to know whether a packet starts a keyframe (to switch a
subscriber to another source or layer only where the decoder can start), and where the
PictureID and TL0PICIDX bytes are, so that a subscriber whose source changes keeps seeing
PictureIDs that increase by one: Chrome's frame buffer drops frames whose id goes backwards.
"""

from __future__ import annotations

from .rtp import RtpInfo


def parse_descriptor(info: RtpInfo) -> None:
    """Fill the vp8_* and keyframe fields of `info` from its payload (no allocation)."""
    data = info.data
    i = info.payload_offset
    end = len(data) - info.padding
    if i >= end:
        return
    b0 = data[i]
    start = (b0 & 0x10) != 0 and (b0 & 0x07) == 0
    i += 1
    if b0 & 0x80:  # X: extension byte present
        if i >= end:
            return
        b1 = data[i]
        i += 1
        if b1 & 0x80:  # I: PictureID
            if i >= end:
                return
            info.vp8_pid_off = i
            if data[i] & 0x80:
                info.vp8_pid_wide = True
                i += 2
            else:
                i += 1
        if b1 & 0x40:  # L: TL0PICIDX
            info.vp8_tl0_off = i
            i += 1
        if b1 & 0x30:  # T or K
            if i < end:
                info.vp8_tid = data[i] >> 6
            i += 1
    info.vp8_start = start
    # VP8 payload header: bit 0 of the first byte is the inverse keyframe flag (RFC 7741 4.3).
    if start and i < end and not (data[i] & 0x01):
        info.keyframe = True


def read_picture_id(data: bytes | bytearray, off: int, wide: bool) -> int:
    if wide:
        return ((data[off] & 0x7F) << 8) | data[off + 1]
    return data[off] & 0x7F


def write_picture_id(buf: bytearray, off: int, wide: bool, pid: int) -> None:
    """Write pid in the width the publisher used; a 7-bit field keeps the low 7 bits."""
    if wide:
        buf[off] = 0x80 | ((pid >> 8) & 0x7F)
        buf[off + 1] = pid & 0xFF
    else:
        buf[off] = pid & 0x7F
