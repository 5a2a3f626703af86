"""Which local addresses ICE binds to, and which address it announces.

aioice gathers host candidates from every interface except 127.0.0.1 and has no setting for
either the bound or the announced address. A server must choose both: on loopback for tests,
on one interface in production, and behind NAT 1:1 it must announce the public address while
binding the private one. aioice looks `get_host_addresses` up as a module global on every
gather, so one patch that consults a context variable lets the server choose addresses per
peer connection without affecting other aiortc users in the same process (such as the
synthetic sites of a load test, which choose their own).
"""

from __future__ import annotations

import contextlib
import contextvars
import ipaddress
import re
import socket
from typing import Iterator, Optional, Sequence

import aioice.ice

_bind_addresses: contextvars.ContextVar[Optional[tuple[str, ...]]] = contextvars.ContextVar(
    "hoinghi_bind_addresses", default=None
)
_original_get_host_addresses = aioice.ice.get_host_addresses


def _get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    chosen = _bind_addresses.get()
    if chosen is None:
        return _original_get_host_addresses(use_ipv4, use_ipv6)
    return [a for a in chosen if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]


def install() -> None:
    """Patch aioice once; idempotent."""
    if aioice.ice.get_host_addresses is not _get_host_addresses:
        aioice.ice.get_host_addresses = _get_host_addresses


@contextlib.contextmanager
def bind_addresses(addresses: Optional[Sequence[str]]) -> Iterator[None]:
    """Within this context, ICE gathering binds only `addresses` (None: aioice's default)."""
    install()
    token = _bind_addresses.set(tuple(addresses) if addresses is not None else None)
    try:
        yield
    finally:
        _bind_addresses.reset(token)


def is_local_address(address: str) -> bool:
    """True if this machine can bind `address` (loopback or an interface address)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if ip.is_loopback:
        return True
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    with contextlib.closing(socket.socket(family, socket.SOCK_DGRAM)) as s:
        try:
            s.bind((address, 0))
        except OSError:
            return False
    return True


_CANDIDATE = re.compile(r"^(a=candidate:\S+ \d+ \S+ \d+ )(\S+)( \d+ typ host)", re.MULTILINE)


def announce(sdp: str, public_ip: str) -> str:
    """Rewrite host candidates to the announced address (NAT 1:1 mapping)."""
    return _CANDIDATE.sub(lambda m: m.group(1) + public_ip + m.group(3), sdp)
