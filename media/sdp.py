"""Reading a site's offer and shaping the server's answer.

aiortc parses SDP for ICE/DTLS and codecs but ignores rid/simulcast lines and keeps only the
header extensions it implements itself. The SFU needs more: which m-sections a site
publishes on and which it receives on (its slots), the publisher's SSRCs, RTX pairing and
rids, and every extension URI it forwards. `inspect_offer` gathers those facts and refuses an
offer the SFU cannot serve with a reason an operator can act on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiortc import sdp as aiortc_sdp

from .rtp import (
    URI_ABS_SEND_TIME,
    URI_AUDIO_LEVEL,
    URI_MID,
    URI_RID,
    URI_RRID,
    URI_TRANSPORT_CC,
    URI_VIDEO_ORIENTATION,
)

#: Extensions the SFU reads on what a site publishes.
PUBLISH_EXTENSIONS = {
    "audio": [URI_MID, URI_AUDIO_LEVEL, URI_ABS_SEND_TIME],
    "video": [URI_MID, URI_RID, URI_RRID, URI_ABS_SEND_TIME, URI_VIDEO_ORIENTATION],
}
#: Extensions the SFU writes on what it forwards to a site. No mid/rid: slots are signalled
#: by SSRC, and the source behind a slot changes, so a publisher's mid would misroute.
SLOT_EXTENSIONS = {
    "audio": [URI_AUDIO_LEVEL, URI_TRANSPORT_CC],
    "video": [URI_ABS_SEND_TIME, URI_TRANSPORT_CC],
}

CODEC_FOR_KIND = {"audio": "audio/opus", "video": "video/vp8"}


class OfferError(ValueError):
    """An offer the SFU cannot accept; the message says why in plain words."""


@dataclass
class Section:
    index: int
    kind: str
    mid: str
    direction: str
    extensions: dict[str, int] = field(default_factory=dict)  # uri -> id
    ssrcs: list[int] = field(default_factory=list)
    fid: dict[int, int] = field(default_factory=dict)  # media ssrc -> rtx ssrc
    rids: list[str] = field(default_factory=list)  # send rids in simulcast order
    feedback: set[str] = field(default_factory=set)  # rtcp-fb types offered for the main codec

    @property
    def publishes(self) -> bool:
        return self.direction in ("sendonly", "sendrecv")

    @property
    def receives(self) -> bool:
        return self.direction == "recvonly"


@dataclass
class OfferInfo:
    sections: list[Section]
    publish: dict[str, Section]  # kind -> section
    slots: dict[str, list[Section]]  # kind -> recvonly sections, in order


def _raw_sections(text: str) -> list[list[str]]:
    sections: list[list[str]] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if line.startswith("m="):
            sections.append([])
        elif sections:
            sections[-1].append(line.strip())
    return sections


def inspect_offer(text: str, max_video_slots: int, max_audio_slots: int) -> OfferInfo:
    try:
        desc = aiortc_sdp.SessionDescription.parse(text)
    except Exception as exc:  # aiortc raises ValueError, IndexError, KeyError... on garbage
        raise OfferError(f"the offer is not valid SDP ({type(exc).__name__}: {str(exc)[:120]})") from None
    if not desc.media:
        raise OfferError("the offer has no media sections")
    raw = _raw_sections(text)
    bundle = next((g for g in desc.group if g.semantic == "BUNDLE"), None)
    info = OfferInfo(sections=[], publish={}, slots={"audio": [], "video": []})
    for i, media in enumerate(desc.media):
        if media.kind not in ("audio", "video"):
            continue  # a data channel section is allowed and ignored
        mid = media.rtp.muxId
        if not mid:
            raise OfferError(f"m-section {i} has no a=mid")
        if bundle is None or mid not in bundle.items:
            raise OfferError("the offer must BUNDLE all media on one transport (bundlePolicy 'max-bundle')")
        if not media.ice.usernameFragment or not media.ice.password:
            raise OfferError(f"m-section {mid} has no ICE credentials")
        if not media.rtcp_mux:
            raise OfferError(f"m-section {mid} does not use rtcp-mux")
        if not media.dtls or not media.dtls.fingerprints:
            raise OfferError(f"m-section {mid} has no DTLS fingerprint")
        direction = media.direction or "sendrecv"
        wanted = CODEC_FOR_KIND[media.kind]
        if direction != "inactive" and not any(c.mimeType.lower() == wanted for c in media.rtp.codecs):
            raise OfferError(f"m-section {mid} ({media.kind}) does not offer {wanted.split('/')[1].upper()}")
        section = Section(
            index=i,
            kind=media.kind,
            mid=str(mid),
            direction=direction,
            extensions={x.uri: x.id for x in media.rtp.headerExtensions},
            ssrcs=[s.ssrc for s in media.ssrc],
        )
        main = next((c for c in media.rtp.codecs if c.mimeType.lower() == wanted), None)
        if main is not None:
            section.feedback = {f.type + (" " + f.parameter if f.parameter else "") for f in main.rtcpFeedback}
        for group in media.ssrc_group:
            if group.semantic == "FID" and len(group.items) == 2:
                section.fid[int(group.items[0])] = int(group.items[1])
        simulcast: list[str] = []
        for line in raw[i] if i < len(raw) else []:
            if line.startswith("a=rid:"):
                parts = line[6:].split()
                if len(parts) >= 2 and parts[1] == "send":
                    section.rids.append(parts[0])
            elif line.startswith("a=simulcast:send "):
                simulcast = [r.lstrip("~") for alt in line[17:].split(";") for r in alt.split(",")[:1]]
        if section.rids:
            if len(section.rids) > 3:
                raise OfferError(f"m-section {mid} offers {len(section.rids)} simulcast layers; at most 3 are supported")
            section.rids = order_layers([r for r in (simulcast or section.rids) if r in section.rids])
        if section.publishes:
            if media.kind in info.publish:
                raise OfferError(f"a site may publish at most one {media.kind} track (second one in m-section {mid})")
            info.publish[media.kind] = section
        elif section.receives:
            info.slots[media.kind].append(section)
        info.sections.append(section)
    if len(info.slots["video"]) > max_video_slots:
        raise OfferError(f"the offer asks for {len(info.slots['video'])} video slots; this meeting allows {max_video_slots}")
    if len(info.slots["audio"]) > max_audio_slots:
        raise OfferError(f"the offer asks for {len(info.slots['audio'])} audio slots; this meeting allows {max_audio_slots}")
    return info


def order_layers(rids: list[str]) -> list[str]:
    """Lowest layer first. Browsers list rids in the order the page set its encodings; the
    conventional names q/h/f (quarter, half, full) are ordered by name, others as listed."""
    rank = {"q": 0, "l": 0, "low": 0, "h": 1, "m": 1, "mid": 1, "f": 2, "high": 2}
    if all(r in rank for r in rids):
        return sorted(rids, key=lambda r: rank[r])
    return rids


def add_simulcast_answer(sdp_text: str, mid: str, rids: list[str]) -> str:
    """Answer a simulcast offer: without rid ... recv and simulcast:recv lines the browser
    sends only its first encoding (aiortc writes neither)."""
    extra = [f"a=rid:{r} recv" for r in rids] + [f"a=simulcast:recv {';'.join(rids)}"]
    out: list[str] = []
    for line in sdp_text.split("\r\n"):
        out.append(line)
        if line == f"a=mid:{mid}":
            out.extend(extra)
    return "\r\n".join(out)


def add_fmtp(sdp_text: str, mid: str, payload_type: int, params: str) -> str:
    """Append codec parameters to one payload type's a=fmtp line in the m-section `mid`;
    a payload type without one gets a new a=fmtp line after its a=rtpmap."""
    lines = sdp_text.split("\r\n")
    starts = [i for i, line in enumerate(lines) if line.startswith("m=")] + [len(lines)]
    fmtp, rtpmap = f"a=fmtp:{payload_type} ", f"a=rtpmap:{payload_type} "
    for a, b in zip(starts, starts[1:]):
        if f"a=mid:{mid}" not in lines[a:b]:
            continue
        for i in range(a, b):
            if lines[i].startswith(fmtp):
                lines[i] = f"{lines[i]};{params}"
                break
        else:
            for i in range(a, b):
                if lines[i].startswith(rtpmap):
                    lines.insert(i + 1, f"{fmtp}{params}")
                    break
        break
    return "\r\n".join(lines)
