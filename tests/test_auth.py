"""Join tokens: real secret files in tmp_path, real PyJWT."""

from __future__ import annotations

import base64
import json
import stat
import time
from pathlib import Path

import jwt
import pytest

from server.auth import AuthError, Claims, SecretFileError, TokenService


@pytest.fixture
def svc(tmp_path: Path) -> TokenService:
    return TokenService(tmp_path / "data" / "secret.key")


def _b64(obj: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def test_secret_file_created_private(tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / "secret.key"
    TokenService(path)
    assert path.is_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    lines = [l for l in path.read_text().splitlines() if l and not l.startswith("#")]
    assert len(lines) == 1 and len(bytes.fromhex(lines[0])) == 32
    assert [p.name for p in path.parent.iterdir()] == ["secret.key"]  # no temp file left


def test_secret_reused_across_instances(tmp_path: Path) -> None:
    path = tmp_path / "secret.key"
    token = TokenService(path).issue("m", "s", "site", 60)
    assert TokenService(path).verify(token).site_id == "s"


def test_roundtrip(svc: TokenService) -> None:
    before = time.time()
    token = svc.issue("demo", "district-7", "operator", 3600, name="Huyện Bảy")
    claims = svc.verify(token)
    assert isinstance(claims, Claims)
    assert (claims.meeting_id, claims.site_id, claims.role, claims.name) == (
        "demo", "district-7", "operator", "Huyện Bảy")
    assert before + 3600 - 2 <= claims.expires_at <= time.time() + 3600 + 1
    assert claims.token_id
    with pytest.raises(Exception):
        claims.role = "hub"  # frozen

    payload = jwt.decode(token, options={"verify_signature": False})
    assert payload["iss"] == "hoinghi" and payload["sub"] == "district-7" and payload["mtg"] == "demo"
    assert jwt.get_unverified_header(token)["alg"] == "HS256"


def test_name_optional_and_jti_unique(svc: TokenService) -> None:
    a, b = svc.issue("m", "s", "hub", 60), svc.issue("m", "s", "hub", 60)
    ca, cb = svc.verify(a), svc.verify(b)
    assert ca.name is None
    assert ca.token_id != cb.token_id


def test_expired(svc: TokenService) -> None:
    token = svc.issue("m", "s", "site", 1)
    # Re-sign the same claims with exp in the past beyond the 5 s leeway.
    payload = jwt.decode(token, options={"verify_signature": False})
    payload["iat"] -= 100
    payload["exp"] = int(time.time()) - 10
    expired = jwt.encode(payload, svc._keys[0], algorithm="HS256", headers=jwt.get_unverified_header(token))
    with pytest.raises(AuthError) as err:
        svc.verify(expired)
    assert err.value.code == "auth_expired"


def test_within_leeway_accepted(svc: TokenService) -> None:
    payload = {"iss": "hoinghi", "sub": "s", "mtg": "m", "role": "site",
               "iat": int(time.time()) - 60, "exp": int(time.time()) - 2, "jti": "x"}
    token = jwt.encode(payload, svc._keys[0], algorithm="HS256")
    assert svc.verify(token).site_id == "s"


def test_wrong_secret(tmp_path: Path, svc: TokenService) -> None:
    other = TokenService(tmp_path / "other.key")
    with pytest.raises(AuthError) as err:
        svc.verify(other.issue("m", "s", "site", 60))
    assert err.value.code == "auth_invalid"


def test_wrong_secret_without_kid(svc: TokenService) -> None:
    payload = {"iss": "hoinghi", "sub": "s", "mtg": "m", "role": "site",
               "iat": int(time.time()), "exp": int(time.time()) + 60, "jti": "x"}
    with pytest.raises(AuthError) as err:
        svc.verify(jwt.encode(payload, b"k" * 32, algorithm="HS256"))
    assert err.value.code == "auth_invalid"


def test_expired_with_wrong_secret_is_invalid(tmp_path: Path, svc: TokenService) -> None:
    # A forged token must not learn anything (like "expired") from the server.
    payload = {"iss": "hoinghi", "sub": "s", "mtg": "m", "role": "site",
               "iat": int(time.time()) - 100, "exp": int(time.time()) - 50, "jti": "x"}
    with pytest.raises(AuthError) as err:
        svc.verify(jwt.encode(payload, b"k" * 32, algorithm="HS256"))
    assert err.value.code == "auth_invalid"


def test_tampered_payload(svc: TokenService) -> None:
    token = svc.issue("m", "commune-1", "site", 60)
    header, payload_b64, sig = token.split(".")
    payload = jwt.decode(token, options={"verify_signature": False})
    payload["role"] = "hub"
    forged = ".".join([header, _b64(payload), sig])
    with pytest.raises(AuthError) as err:
        svc.verify(forged)
    assert err.value.code == "auth_invalid"
    assert forged not in err.value.message and forged not in str(err.value)


def test_alg_none_rejected(svc: TokenService) -> None:
    payload = {"iss": "hoinghi", "sub": "s", "mtg": "m", "role": "hub",
               "iat": int(time.time()), "exp": int(time.time()) + 60, "jti": "x"}
    token = _b64({"alg": "none", "typ": "JWT"}) + "." + _b64(payload) + "."
    with pytest.raises(AuthError) as err:
        svc.verify(token)
    assert err.value.code == "auth_invalid"


@pytest.mark.parametrize("token", ["", "garbage", "a.b.c", "x" * 200])
def test_malformed(svc: TokenService, token: str) -> None:
    with pytest.raises(AuthError) as err:
        svc.verify(token)
    assert err.value.code == "auth_invalid"


def _signed(svc: TokenService, **changes) -> str:
    payload = {"iss": "hoinghi", "sub": "s", "mtg": "m", "role": "site",
               "iat": int(time.time()), "exp": int(time.time()) + 60, "jti": "j"}
    for k, v in changes.items():
        if v is None:
            payload.pop(k)
        else:
            payload[k] = v
    return jwt.encode(payload, svc._keys[0], algorithm="HS256")


@pytest.mark.parametrize(
    "changes",
    [
        {"role": "admin"},
        {"role": None},
        {"mtg": None},
        {"mtg": ""},
        {"sub": None},
        {"exp": None},
        {"jti": None},
        {"iss": "someone-else"},
        {"iss": None},
        {"name": 42},
    ],
    ids=repr,
)
def test_bad_claims(svc: TokenService, changes: dict) -> None:
    with pytest.raises(AuthError) as err:
        svc.verify(_signed(svc, **changes))
    assert err.value.code == "auth_invalid"


def test_issue_validates(svc: TokenService) -> None:
    with pytest.raises(ValueError):
        svc.issue("m", "s", "admin", 60)
    with pytest.raises(ValueError):
        svc.issue("", "s", "site", 60)
    with pytest.raises(ValueError):
        svc.issue("m", "s", "site", 0)


def test_key_rotation(tmp_path: Path) -> None:
    path = tmp_path / "secret.key"
    old = TokenService(path)
    old_token = old.issue("m", "s", "site", 600)
    old_hex = [l for l in path.read_text().splitlines() if l and not l.startswith("#")][0]
    new_hex = "ab" * 32
    path.write_text(f"# rotated\n{new_hex}\n{old_hex}  # previous, remove after expiry\n")

    rotated = TokenService(path)
    assert rotated.verify(old_token).site_id == "s"  # previous key still accepted
    new_token = rotated.issue("m", "s2", "site", 600)
    assert jwt.decode(new_token, bytes.fromhex(new_hex), algorithms=["HS256"],
                      options={"verify_aud": False})["sub"] == "s2"
    with pytest.raises(AuthError):
        old.verify(new_token)  # a server still on the old file rejects new-key tokens

    path.write_text(f"{new_hex}\n")
    with pytest.raises(AuthError) as err:
        TokenService(path).verify(old_token)  # retired key no longer accepted
    assert err.value.code == "auth_invalid"


@pytest.mark.parametrize("content", ["", "# only a comment\n", "not-hex\n", "abcd\n"])
def test_bad_secret_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "secret.key"
    path.write_text(content)
    with pytest.raises(SecretFileError):
        TokenService(path)
