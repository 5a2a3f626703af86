"""Short-lived TURN credentials (the "TURN REST API" that coturn's use-auth-secret implements).

Sites behind a firewall that lets only TCP 443/5349 out reach the server through a TURN
relay over TLS. A fixed TURN password in every join reply would be a standing credential
for the relay; instead each join reply carries a username `<expiry>:<site id>` and its
HMAC-SHA1 under the secret shared with coturn (`static-auth-secret`). coturn checks the HMAC
and the expiry itself, so the credential is worthless after `ttl_s` and no state is shared.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Optional


def turn_credentials(secret: str, user: str, ttl_s: int, now: Optional[float] = None) -> tuple[str, str]:
    """(username, credential) valid for `ttl_s` seconds from `now`."""
    expiry = int((time.time() if now is None else now) + ttl_s)
    username = f"{expiry}:{user}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


class IceServers:
    """Builds the `ice_servers` list of a join reply (RTCIceServer dictionaries)."""

    def __init__(self, urls: list[str], secret: Optional[str], ttl_s: int) -> None:
        self.stun = [u for u in urls if u.startswith("stun")]
        self.turn = [u for u in urls if u.startswith("turn")]
        self.secret = secret
        self.ttl_s = ttl_s

    def for_site(self, site_id: str) -> list[dict]:
        servers: list[dict] = []
        if self.stun:
            servers.append({"urls": list(self.stun)})
        if self.turn and self.secret:
            username, credential = turn_credentials(self.secret, site_id, self.ttl_s)
            servers.append({"urls": list(self.turn), "username": username, "credential": credential})
        return servers
