"""Join tokens: who may enter which meeting, as which role, until when.

Tokens are HS256 JWTs signed with a secret kept in the data directory. A shared secret
(not a key pair) is enough because the only issuers are the server itself and the
`hoinghi token` command run on the same machine; both read the same file.

Secret file format — text, one hex-encoded secret per line, `#` starts a comment:

    # first line signs new tokens; later lines are still accepted (key rotation)
    <current secret hex>
    <previous secret hex>

To rotate: put a new secret on the first line, keep the old one below it until every token
it signed has expired (token_ttl_s), then delete it. Each token carries a `kid` header
(a short hash of the secret that signed it) so verification picks the right key directly.

Tokens must never be logged: they are bearer credentials. Errors raised here describe
what was wrong with a token without quoting it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

log = logging.getLogger(__name__)

ISSUER = "hoinghi"
ALGORITHM = "HS256"
ROLES = ("hub", "operator", "site")
LEEWAY_S = 5
SECRET_BYTES = 32
_MIN_SECRET_BYTES = 16


class AuthError(Exception):
    """Token rejected. `code` is machine-readable and goes to the client as-is:
    "auth_expired" (ask for a new link) or "auth_invalid" (anything else)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class SecretFileError(Exception):
    """The secret file exists but cannot be read or parsed."""


@dataclass(frozen=True)
class Claims:
    meeting_id: str
    site_id: str
    role: str
    name: str | None
    expires_at: float  # Unix seconds
    token_id: str


def _kid(secret: bytes) -> str:
    return hashlib.sha256(secret).hexdigest()[:8]


def _parse_secret_file(path: Path, text: str) -> list[bytes]:
    keys: list[bytes] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            key = bytes.fromhex(line)
        except ValueError:
            raise SecretFileError(f"{path} line {lineno}: expected a hex-encoded secret") from None
        if len(key) < _MIN_SECRET_BYTES:
            raise SecretFileError(f"{path} line {lineno}: secret shorter than {_MIN_SECRET_BYTES} bytes")
        keys.append(key)
    if not keys:
        raise SecretFileError(f"{path} contains no secret")
    return keys


def _create_secret_file(path: Path) -> None:
    """Write a fresh secret without ever exposing a half-written or world-readable file.

    The server and `hoinghi token` may both start against an empty data dir at the same
    moment; link() fails if the name exists, so exactly one secret wins and the loser
    reads it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    body = (
        "# hoinghi token signing secrets. First line signs; later lines are still accepted.\n"
        + secrets.token_bytes(SECRET_BYTES).hex()
        + "\n"
    )
    fd, tmp = tempfile.mkstemp(prefix=".secret-", dir=path.parent)  # mkstemp creates 0600
    try:
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(body)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp)


class TokenService:
    """Issues and verifies join tokens with the secrets in `secret_path`."""

    def __init__(self, secret_path: Path) -> None:
        self.secret_path = Path(secret_path)
        if not self.secret_path.exists():
            try:
                _create_secret_file(self.secret_path)
            except OSError as exc:
                raise SecretFileError(f"cannot create secret file {self.secret_path}: {exc}") from None
        try:
            text = self.secret_path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise SecretFileError(f"cannot read secret file {self.secret_path}: {exc}") from None
        mode = self.secret_path.stat().st_mode & 0o777
        if mode & 0o077:
            log.warning("secret file %s is readable by other users (mode %o); chmod 600 it",
                        self.secret_path, mode)
        self._keys = _parse_secret_file(self.secret_path, text)
        self._by_kid = {_kid(k): k for k in self._keys}
        self._stamp = self._file_stamp()
        self._checked = time.monotonic()

    # Rotation without downtime: the running server notices an edited secret file (checked
    # at most once a second, on use) and takes its keys, so a new first line signs and is
    # accepted at once and a deleted line stops being accepted, with no restart. A file
    # that fails to parse mid-edit is ignored (the previous keys stay) and retried.
    RELOAD_CHECK_S = 1.0

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = self.secret_path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._checked < self.RELOAD_CHECK_S:
            return
        self._checked = now
        stamp = self._file_stamp()
        if stamp is None or stamp == self._stamp:
            return
        try:
            keys = _parse_secret_file(self.secret_path, self.secret_path.read_text(encoding="ascii"))
        except (OSError, UnicodeDecodeError, SecretFileError) as exc:
            log.warning("secret file %s changed but cannot be used yet (%s); keeping the previous keys",
                        self.secret_path, exc)
            return
        self._stamp = stamp
        if keys != self._keys:
            self._keys = keys
            self._by_kid = {_kid(k): k for k in keys}
            log.info("secret file %s reloaded: %d key(s), signing with key %s", self.secret_path, len(keys), _kid(keys[0]))

    def issue(
        self, meeting_id: str, site_id: str, role: str, ttl_s: int, name: str | None = None
    ) -> str:
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        if not meeting_id or not site_id:
            raise ValueError("meeting_id and site_id must not be empty")
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "sub": site_id,
            "mtg": meeting_id,
            "role": role,
            "iat": now,
            "exp": now + int(ttl_s),
            "jti": secrets.token_urlsafe(12),
        }
        if name:
            claims["name"] = name
        self._maybe_reload()
        key = self._keys[0]
        return jwt.encode(claims, key, algorithm=ALGORITHM, headers={"kid": _kid(key)})

    def verify(self, token: str) -> Claims:
        if not isinstance(token, str) or not token:
            raise AuthError("auth_invalid", "token missing")
        self._maybe_reload()
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise AuthError("auth_invalid", "token is malformed") from None
        kid = header.get("kid")
        # An unknown kid means a removed (rotated-out) or foreign secret: no key to try.
        keys = [self._by_kid[kid]] if kid in self._by_kid else ([] if kid else self._keys)
        if not keys:
            raise AuthError("auth_invalid", "token was signed with a key this server does not accept")
        last: Exception | None = None
        for key in keys:
            try:
                payload = jwt.decode(
                    token,
                    key,
                    algorithms=[ALGORITHM],
                    issuer=ISSUER,
                    leeway=LEEWAY_S,
                    options={"require": ["iss", "sub", "exp", "iat", "jti"]},
                )
                break
            except jwt.ExpiredSignatureError:
                raise AuthError("auth_expired", "token has expired") from None
            except jwt.InvalidSignatureError as exc:
                last = exc
            except jwt.InvalidTokenError as exc:
                raise AuthError("auth_invalid", f"token rejected: {_describe(exc)}") from None
        else:
            raise AuthError("auth_invalid", "token signature does not match") from last
        return _claims(payload)


def _describe(exc: jwt.InvalidTokenError) -> str:
    # PyJWT messages name claims, never echo the token, so they are safe to pass on.
    return str(exc) or type(exc).__name__


def _claims(payload: dict[str, Any]) -> Claims:
    meeting_id, site_id, role = payload.get("mtg"), payload.get("sub"), payload.get("role")
    name = payload.get("name")
    if not isinstance(meeting_id, str) or not meeting_id:
        raise AuthError("auth_invalid", "token has no meeting")
    if not isinstance(site_id, str) or not site_id:
        raise AuthError("auth_invalid", "token has no site")
    if role not in ROLES:
        raise AuthError("auth_invalid", "token has an unknown role")
    if name is not None and not isinstance(name, str):
        raise AuthError("auth_invalid", "token name is not text")
    jti = payload.get("jti")
    if not isinstance(jti, str) or not jti:
        raise AuthError("auth_invalid", "token has no id")
    return Claims(
        meeting_id=meeting_id,
        site_id=site_id,
        role=role,
        name=name,
        expires_at=float(payload["exp"]),
        token_id=jti,
    )
