"""Open files at `hoinghi serve` start: raise the soft limit, warn when it is still short.

Every connected site costs the server file descriptors: its WebSocket, one UDP socket per
ICE host candidate the server gathers (one per address it binds), and a little more during
a reconnection (the old and the new connection overlap). Many systems start services with a
soft limit of 1024, which a 164-site meeting on a server with a few addresses gets close
to; running out shows up as sites that cannot connect, with "Too many open files" deep in
a log. So the server raises its soft limit to the hard limit (allowed without privileges)
and says plainly at start when even that is below what `max_participants` sites need.
Worker processes inherit the raised limit.
"""

from __future__ import annotations

import resource
from typing import NamedTuple, Optional

#: descriptors that do not scale with sites: listening sockets, SQLite, logs, worker pipes
BASE_FDS = 64
#: per site beyond its ICE sockets: the WebSocket, and the overlap of a reconnection
PER_SITE_EXTRA = 2


class FdCheck(NamedTuple):
    soft: int  # the soft limit now (after raising)
    hard: int
    needed: int
    warning: Optional[str]  # plain words for the operator, None when there are enough


def needed_fds(sites: int, ice_addresses: int) -> int:
    return BASE_FDS + sites * (PER_SITE_EXTRA + max(1, ice_addresses))


def raise_open_files_limit(sites: int, ice_addresses: int = 1) -> FdCheck:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit; say if it is still too low."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    needed = needed_fds(sites, ice_addresses)
    warning = None
    if soft != resource.RLIM_INFINITY and soft < needed:
        warning = (
            f"the open-files limit is {soft} but {sites} sites need about {needed} "
            f"(WebSocket + {max(1, ice_addresses)} ICE socket(s) each); sites beyond the limit "
            "will fail to connect. Raise it (systemd: LimitNOFILE=65536; Docker: --ulimit nofile=65536) "
            "or lower max_participants"
        )
    return FdCheck(int(soft), int(hard), needed, warning)
