"""Server settings and where they come from.

Operators at the provincial hub configure the server, not programmers, so every bad value
is reported as a `ConfigError` naming the key, where it came from (file / environment /
flag) and what would have been accepted — never as a Python traceback.

Precedence, lowest to highest: built-in defaults < TOML config file < HOINGHI_* environment
variables < command-line flags. Flags win because they are what the operator typed last;
the environment beats the file so a container can override a baked-in file.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "HOINGHI_"
CONFIG_FILENAME = "hoinghi.toml"
DB_FILENAME = "hoinghi.db"
SECRET_FILENAME = "secret.key"

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("text", "json")


class ConfigError(Exception):
    """A setting is missing, unknown or has a value the server cannot use."""


@dataclass
class Settings:
    """Everything the server needs to start; built by `load_settings`.

    `public_url` stays None only when the dataclass is built by hand; `load_settings`
    always fills it in so join links printed by the CLI and by the server agree.
    """

    host: str = "0.0.0.0"
    port: int = 8080
    data_dir: Path = field(default_factory=lambda: Path("./hoinghi-data"))
    #: Address written into ICE candidates. Needed when the server sits behind NAT or in a
    #: container, where the addresses it sees on its own interfaces are not reachable by sites.
    announce_ip: str | None = None
    public_url: str | None = None
    token_ttl_s: int = 8 * 3600
    video_slots: int = 9
    audio_slots: int = 3
    max_participants: int = 200
    #: Media worker processes: -1 ("auto", the default) = one per core; 0 = media in the
    #: control process itself (one process; what tests and tiny installs use).
    workers: int = -1
    log_level: str = "info"
    log_format: str = "text"
    #: The hub's own uplink for media, Mbit/s (0 = unlimited). When what every site could
    #: take exceeds it, layers are lowered across sites by priority (media/budget.py).
    egress_mbps: int = 0
    #: Ask sites' browsers for Opus DTX (no audio packets during silence, as LiveKit and Jitsi
    #: do): in a big meeting most sites are silent, so this removes most incoming audio.
    opus_dtx: bool = True
    #: Join pacing (signaling/joinqueue.py): media set-ups at once, and started per second;
    #: the rest wait in line and are told their place, never refused.
    join_concurrency: int = 12
    joins_per_second: int = 25
    demo_meeting: bool = True
    #: UDP ports ICE host candidates bind to, for a firewall that opens a fixed range; 0/0 =
    #: any port. Each connected site holds one port, so the range must cover every site.
    rtc_port_min: int = 0
    rtc_port_max: int = 0
    #: TURN servers handed to sites in the join reply (e.g. turns:turn.example.gov.vn:5349),
    #: with credentials minted per join from `turn_secret` (coturn's static-auth-secret).
    turn_urls: list[str] = field(default_factory=list)
    turn_secret: str | None = None
    turn_ttl_s: int = 12 * 3600

    @property
    def db_path(self) -> Path:
        """SQLite file; one fixed name so the CLI and the server open the same database."""
        return self.data_dir / DB_FILENAME

    @property
    def secret_path(self) -> Path:
        """Token signing secret; shared by `hoinghi token` and the server via the data dir."""
        return self.data_dir / SECRET_FILENAME

    @property
    def join_base_url(self) -> str:
        """Base of join links, with no trailing slash."""
        return (self.public_url or derive_public_url(self.announce_ip, self.port)).rstrip("/")


# --------------------------------------------------------------------------- addresses


def local_ipv4_addresses() -> list[str]:
    """Non-loopback, non-link-local IPv4 addresses of this machine, in interface order.

    ifaddr comes with aioice (it is how aioice gathers host candidates), so using it here
    means the default join URL names an address ICE will also offer.
    """
    found: list[str] = []
    try:
        import ifaddr

        for adapter in ifaddr.get_adapters():
            for ip in adapter.ips:
                if isinstance(ip.ip, str):
                    found.append(ip.ip)
    except Exception:  # pragma: no cover - ifaddr missing or the OS refused to enumerate
        try:
            found = [info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)]
        except OSError:
            found = []
    result: list[str] = []
    for text in found:
        addr = ipaddress.IPv4Address(text)
        if addr.is_loopback or addr.is_link_local or addr.is_unspecified:
            continue
        if text not in result:
            result.append(text)
    return result


def derive_public_url(announce_ip: str | None, port: int) -> str:
    """Default join-link base: the announced address, else the first LAN address."""
    host = announce_ip
    if host is None:
        addrs = local_ipv4_addresses()
        host = addrs[0] if addrs else "127.0.0.1"
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return f"http://{host}:{port}"


# --------------------------------------------------------------------------- converters


def _expect(key: str, source: str, expected: str, value: Any) -> ConfigError:
    return ConfigError(f"{key} ({source}): expected {expected}, got {value!r}")


def _to_int(key: str, source: str, value: Any, lo: int, hi: int) -> int:
    expected = f"a whole number from {lo} to {hi}"
    if isinstance(value, bool):  # TOML true is not a port number
        raise _expect(key, source, expected, value)
    if isinstance(value, str):
        text = value.strip().replace("_", "")
        try:
            value = int(text)
        except ValueError:
            raise _expect(key, source, expected, value) from None
    if not isinstance(value, int) or not lo <= value <= hi:
        raise _expect(key, source, expected, value)
    return value


def _to_bool(key: str, source: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
    raise _expect(key, source, "true or false", value)


def _to_str(key: str, source: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _expect(key, source, "a non-empty text value", value)
    return value.strip()


def _to_optional_str(key: str, source: str, value: Any) -> str | None:
    # An empty HOINGHI_ANNOUNCE_IP= in a compose file means "unset", not "the empty address".
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return _to_str(key, source, value)


def _to_choice(key: str, source: str, value: Any, choices: tuple[str, ...]) -> str:
    if isinstance(value, str) and value.strip().lower() in choices:
        return value.strip().lower()
    raise _expect(key, source, "one of " + ", ".join(choices), value)


def _to_ip(key: str, source: str, value: Any) -> str | None:
    text = _to_optional_str(key, source, value)
    if text is None:
        return None
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise _expect(key, source, "an IP address such as 203.0.113.10 (not a host name)", value) from None
    if addr.is_unspecified:
        raise _expect(key, source, "an address sites can reach (not 0.0.0.0)", value)
    return str(addr)


def _to_url(key: str, source: str, value: Any) -> str | None:
    text = _to_optional_str(key, source, value)
    if text is None:
        return None
    if not (text.startswith("http://") or text.startswith("https://")) or len(text.split("://", 1)[1]) == 0:
        raise _expect(key, source, "a URL starting with http:// or https://", value)
    return text.rstrip("/")


def _to_url_list(key: str, source: str, value: Any) -> list[str]:
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise _expect(key, source, "a list of turn:/turns:/stun: URLs (comma-separated in the environment)", value)
    urls = [v.strip() for v in value]
    for url in urls:
        if not url.split(":", 1)[0] in ("turn", "turns", "stun", "stuns") or len(url.split(":", 1)[1]) == 0:
            raise _expect(key, source, "URLs such as turns:turn.example.gov.vn:5349?transport=tcp", url)
    return urls


def _to_path(key: str, source: str, value: Any) -> Path:
    if isinstance(value, Path):
        return value
    return Path(_to_str(key, source, value)).expanduser()


_CONVERTERS: dict[str, Any] = {
    "host": _to_str,
    "port": lambda k, s, v: _to_int(k, s, v, 0, 65535),
    "data_dir": _to_path,
    "announce_ip": _to_ip,
    "public_url": _to_url,
    "token_ttl_s": lambda k, s, v: _to_int(k, s, v, 60, 366 * 24 * 3600),
    "video_slots": lambda k, s, v: _to_int(k, s, v, 1, 64),
    "audio_slots": lambda k, s, v: _to_int(k, s, v, 1, 16),
    "max_participants": lambda k, s, v: _to_int(k, s, v, 1, 10_000),
    "workers": lambda k, s, v: -1 if isinstance(v, str) and v.strip().lower() == "auto" else _to_int(k, s, v, -1, 256),
    "log_level": lambda k, s, v: _to_choice(k, s, v, LOG_LEVELS),
    "log_format": lambda k, s, v: _to_choice(k, s, v, LOG_FORMATS),
    "egress_mbps": lambda k, s, v: _to_int(k, s, v, 0, 1_000_000),
    "opus_dtx": _to_bool,
    "join_concurrency": lambda k, s, v: _to_int(k, s, v, 1, 1000),
    "joins_per_second": lambda k, s, v: _to_int(k, s, v, 1, 1000),
    "demo_meeting": _to_bool,
    "rtc_port_min": lambda k, s, v: _to_int(k, s, v, 0, 65535),
    "rtc_port_max": lambda k, s, v: _to_int(k, s, v, 0, 65535),
    "turn_urls": _to_url_list,
    "turn_secret": _to_optional_str,
    "turn_ttl_s": lambda k, s, v: _to_int(k, s, v, 60, 7 * 24 * 3600),
}
FIELDS = tuple(f.name for f in dataclasses.fields(Settings))
assert set(FIELDS) == set(_CONVERTERS), "every Settings field needs a converter"


def _convert(raw: Mapping[str, Any], source_of: Mapping[str, str]) -> dict[str, Any]:
    return {key: _CONVERTERS[key](key, source_of[key], value) for key, value in raw.items()}


# --------------------------------------------------------------------------- loading


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise ConfigError(
            f"config file {path}: unknown setting(s) {', '.join(unknown)}; "
            f"known settings are: {', '.join(FIELDS)}"
        )
    return data


def _env_values(env: Mapping[str, str]) -> dict[str, str]:
    return {name: env[ENV_PREFIX + name.upper()] for name in FIELDS if ENV_PREFIX + name.upper() in env}


def load_settings(
    config_file: Path | None = None,
    env: Mapping[str, str] = os.environ,
    overrides: dict[str, Any] | None = None,
) -> Settings:
    """Merge defaults, config file, environment and CLI overrides into `Settings`.

    `config_file` given explicitly must exist (a typo in --config should not silently run
    with defaults). Without it, `<data_dir>/hoinghi.toml` is read if present, where
    data_dir is taken from the overrides/environment — the file cannot locate itself.
    Values of None in `overrides` mean "flag not given" and are ignored.
    """
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = sorted(set(flags) - set(FIELDS))
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)}")
    env_raw = _env_values(env)

    merged: dict[str, Any] = {}
    source_of: dict[str, str] = {}

    # Resolve data_dir first (flags > env > default) so we know where the default file is.
    if config_file is None:
        if "data_dir" in flags:
            data_dir = _to_path("data_dir", "--data-dir", flags["data_dir"])
        elif "data_dir" in env_raw:
            data_dir = _to_path("data_dir", f"environment {ENV_PREFIX}DATA_DIR", env_raw["data_dir"])
        else:
            data_dir = Settings().data_dir
        if (data_dir / CONFIG_FILENAME).is_file():
            config_file = data_dir / CONFIG_FILENAME
    if config_file is not None:
        for key, value in _read_config_file(Path(config_file)).items():
            merged[key], source_of[key] = value, f"config file {config_file}"
    for key, value in env_raw.items():
        merged[key], source_of[key] = value, f"environment {ENV_PREFIX}{key.upper()}"
    for key, value in flags.items():
        merged[key], source_of[key] = value, "--" + key.replace("_", "-")

    settings = Settings(**_convert(merged, source_of))
    _check_port_range(settings, source_of)
    if any(u.startswith("turn") for u in settings.turn_urls) and not settings.turn_secret:
        raise ConfigError(
            f"turn_urls ({source_of.get('turn_urls')}): TURN needs turn_secret, the static-auth-secret "
            "shared with the TURN server, so the server can hand out short-lived credentials"
        )
    if settings.public_url is None:
        settings.public_url = derive_public_url(settings.announce_ip, settings.port)
    return settings


def _check_port_range(settings: Settings, source_of: Mapping[str, str]) -> None:
    low, high = settings.rtc_port_min, settings.rtc_port_max
    if low == 0 and high == 0:
        return
    where = f"rtc_port_min ({source_of.get('rtc_port_min', 'default')}), rtc_port_max ({source_of.get('rtc_port_max', 'default')})"
    if low == 0 or high == 0:
        raise ConfigError(f"{where}: set both ends of the UDP port range, e.g. 40000 and 40999 (or neither)")
    if low < 1024 or low > high:
        raise ConfigError(f"{where}: expected 1024 <= rtc_port_min <= rtc_port_max, got {low}-{high}")
