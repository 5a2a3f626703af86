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
        if i > end:
            # The descriptor claims bytes the packet does not have: offsets past the end
            # would make every subscriber's rewrite fail. Treat it as carrying no descriptor.
            info.vp8_pid_off = -1
            info.vp8_pid_wide = False
            info.vp8_tl0_off = -1
            info.vp8_tid = 0
            return
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


def descriptor_length(data: bytes | bytearray, i: int, end: int) -> int:
    """Length of the payload descriptor at data[i:end] (RFC 7741 4.2), -1 if truncated.

    What follows it is VP8 bitstream: a depacketizer (the recorder) strips exactly this many
    bytes from every packet of a frame and concatenates the rest.
    """
    if i >= end:
        return -1
    n = 1
    b0 = data[i]
    if b0 & 0x80:
        if i + 1 >= end:
            return -1
        b1 = data[i + 1]
        n = 2
        if b1 & 0x80:  # I: PictureID, 7 or 15 bits
            if i + n >= end:
                return -1
            n += 2 if data[i + n] & 0x80 else 1
        if b1 & 0x40:  # L: TL0PICIDX
            n += 1
        if b1 & 0x30:  # T or K: TID/Y/KEYIDX byte
            n += 1
    return n if i + n <= end else -1


def keyframe_size(data: bytes | bytearray, i: int, end: int) -> tuple[int, int] | None:
    """(width, height) from the start of a VP8 keyframe (RFC 6386 9.1), else None.

    The frame starts with a 3-byte frame tag (bit 0 clear on a keyframe), then the start
    code 9d 01 2a, then 16-bit little-endian width and height whose top 2 bits are scaling.
    """
    if end - i < 10 or data[i] & 0x01:
        return None
    if data[i + 3] != 0x9D or data[i + 4] != 0x01 or data[i + 5] != 0x2A:
        return None
    width = (data[i + 6] | (data[i + 7] << 8)) & 0x3FFF
    height = (data[i + 8] | (data[i + 9] << 8)) & 0x3FFF
    if not width or not height:
        return None
    return width, height
