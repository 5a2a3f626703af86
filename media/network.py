"""Which local addresses ICE binds to, and which address it announces.

aioice gathers host candidates from every interface except 127.0.0.1 and has no setting for
either the bound or the announced address. A server must choose both: on loopback for tests,
on one interface in production, and behind NAT 1:1 it must announce the public address while
binding the private one. aioice looks `get_host_addresses` up as a module global on every
gather, so one patch that consults a context variable lets the server choose addresses per
peer connection without affecting other aiortc users in the same process (such as the
synthetic sites of a load test, which choose their own).

The same goes for ports: aioice binds every host candidate to port 0, which a firewall in
front of the hub cannot open ahead of time. `port_range` makes every host candidate of
gathering done within it bind inside [low, high], by handing aioice a loop whose
`create_datagram_endpoint` picks the port; outside the context nothing changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import errno
import ipaddress
import logging
import random
import re
import socket
import types
from typing import Any, Iterator, Optional, Sequence

import aioice.ice

logger = logging.getLogger(__name__)

_bind_addresses: contextvars.ContextVar[Optional[tuple[str, ...]]] = contextvars.ContextVar(
    "hoinghi_bind_addresses", default=None
)
_original_get_host_addresses = aioice.ice.get_host_addresses


def _get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    chosen = _bind_addresses.get()
    if chosen is None:
        return _original_get_host_addresses(use_ipv4, use_ipv6)
    return [a for a in chosen if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]


class PortRangeExhausted(OSError):
    """Every UDP port of the configured range is taken on this address."""


class PortRange:
    """An inclusive UDP port range shared by every gathering that uses it.

    Ports are tried from a rotating cursor, so consecutive transports spread over the
    range instead of all probing the same busy low ports first. `exhausted` counts binds
    that found no free port (read by the transport to refuse the offer with a reason).
    """

    def __init__(self, low: int, high: int) -> None:
        if not 1 <= low <= high <= 65535:
            raise ValueError(f"bad UDP port range {low}-{high}")
        self.low = low
        self.high = high
        self._cursor = random.randrange(low, high + 1)
        self.exhausted = 0

    def __len__(self) -> int:
        return self.high - self.low + 1

    def __str__(self) -> str:
        return f"{self.low}-{self.high}"

    def bind(self, family: int, address: str) -> socket.socket:
        """A UDP socket bound to `address` on the first free port of the range."""
        size = len(self)
        for i in range(size):
            port = self.low + (self._cursor - self.low + i) % size
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.bind((address, port))
            except OSError as exc:
                sock.close()
                if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                    continue
                raise
            self._cursor = port + 1 if port < self.high else self.low
            sock.setblocking(False)
            return sock
        self.exhausted += 1
        logger.error("no free UDP port in the range %s on %s: raise rtc_port_max or widen the range", self, address)
        raise PortRangeExhausted(errno.EADDRINUSE, f"no free UDP port in the range {self} on {address}")


_port_range: contextvars.ContextVar[Optional[PortRange]] = contextvars.ContextVar("hoinghi_port_range", default=None)


class _RangeLoop:
    """The running loop, except that port-0 UDP binds go to the context's port range."""

    def __init__(self, loop: asyncio.AbstractEventLoop, ports: PortRange) -> None:
        self._loop = loop
        self._ports = ports

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)

    async def create_datagram_endpoint(self, protocol_factory, local_addr=None, **kwargs):  # type: ignore[no-untyped-def]
        if local_addr is None or local_addr[1] != 0 or kwargs.get("remote_addr") or kwargs.get("sock"):
            return await self._loop.create_datagram_endpoint(protocol_factory, local_addr=local_addr, **kwargs)
        family = socket.AF_INET6 if ":" in local_addr[0] else socket.AF_INET
        sock = self._ports.bind(family, local_addr[0])
        try:
            return await self._loop.create_datagram_endpoint(protocol_factory, sock=sock, **kwargs)
        except BaseException:
            sock.close()
            raise


def _get_running_loop() -> Any:
    loop = asyncio.get_running_loop()
    ports = _port_range.get()
    return loop if ports is None else _RangeLoop(loop, ports)


# aioice.ice reaches the loop only through `asyncio.get_running_loop()`; give that module an
# `asyncio` whose get_running_loop consults the context variable and is otherwise asyncio.
_aioice_asyncio = types.ModuleType("asyncio_for_aioice")
_aioice_asyncio.__dict__.update({k: v for k, v in vars(asyncio).items() if not k.startswith("__")})
_aioice_asyncio.get_running_loop = _get_running_loop  # type: ignore[attr-defined]


def install() -> None:
    """Patch aioice once; idempotent."""
    if aioice.ice.get_host_addresses is not _get_host_addresses:
        aioice.ice.get_host_addresses = _get_host_addresses
    if aioice.ice.asyncio is not _aioice_asyncio:
        aioice.ice.asyncio = _aioice_asyncio  # type: ignore[attr-defined]


@contextlib.contextmanager
def port_range(ports: Optional[PortRange]) -> Iterator[None]:
    """Within this context, ICE host candidates bind inside `ports` (None: any port)."""
    install()
    token = _port_range.set(ports)
    try:
        yield
    finally:
        _port_range.reset(token)


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
