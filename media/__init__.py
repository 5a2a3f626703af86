"""The forwarding core: RTP/RTCP at packet level over aiortc's ICE, DTLS and SRTP.

Vocabulary follows mediasoup: a Router per meeting, a WebRtcTransport per participant,
a Producer per published track (a RecvStream per simulcast layer), a Consumer per receive
slot of a subscriber. See docs/architecture.md for the packet path.
"""

from .router import Router
from .sdp import OfferError
from .transport import MediaSettings, WebRtcTransport

__all__ = ["Router", "OfferError", "MediaSettings", "WebRtcTransport"]
