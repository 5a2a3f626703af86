"""Settings precedence and operator-facing errors, against real files in tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.config import ConfigError, Settings, derive_public_url, load_settings, local_ipv4_addresses


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults(tmp_path: Path) -> None:
    s = load_settings(env={}, overrides={"data_dir": tmp_path})
    assert (s.host, s.port, s.token_ttl_s) == ("0.0.0.0", 8080, 8 * 3600)
    assert (s.video_slots, s.audio_slots, s.max_participants) == (9, 3, 200)
    assert (s.log_level, s.log_format, s.demo_meeting) == ("info", "text", True)
    assert s.announce_ip is None
    assert s.data_dir == tmp_path
    assert s.db_path == tmp_path / "hoinghi.db"
    assert s.secret_path == tmp_path / "secret.key"


def test_default_data_dir_is_relative() -> None:
    assert Settings().data_dir == Path("./hoinghi-data")


def test_public_url_derived_from_announce_ip(tmp_path: Path) -> None:
    s = load_settings(env={}, overrides={"data_dir": tmp_path, "announce_ip": "203.0.113.7", "port": 9000})
    assert s.public_url == "http://203.0.113.7:9000"
    assert s.join_base_url == "http://203.0.113.7:9000"


def test_public_url_derived_from_lan_address(tmp_path: Path) -> None:
    s = load_settings(env={}, overrides={"data_dir": tmp_path})
    addrs = local_ipv4_addresses()
    assert s.public_url == f"http://{addrs[0] if addrs else '127.0.0.1'}:8080"
    assert all(not a.startswith("127.") for a in addrs)


def test_ipv6_announce_is_bracketed() -> None:
    assert derive_public_url("2001:db8::1", 8080) == "http://[2001:db8::1]:8080"


def test_explicit_public_url_kept_without_trailing_slash(tmp_path: Path) -> None:
    s = load_settings(env={}, overrides={"data_dir": tmp_path, "public_url": "https://hn.example.vn/"})
    assert s.public_url == "https://hn.example.vn"


def test_precedence_file_env_flags(tmp_path: Path) -> None:
    cfg = write(
        tmp_path / "conf" / "site.toml",
        'port = 7000\nhost = "10.0.0.1"\nlog_level = "debug"\nvideo_slots = 4\ndemo_meeting = false\n',
    )
    env = {"HOINGHI_PORT": "7100", "HOINGHI_LOG_LEVEL": "WARNING", "HOINGHI_DATA_DIR": str(tmp_path / "d")}
    s = load_settings(config_file=cfg, env=env, overrides={"port": 7200, "host": None})
    assert s.port == 7200  # flag beats env beats file
    assert s.log_level == "warning"  # env beats file, case-insensitive
    assert s.host == "10.0.0.1"  # file beats default; a None flag is "not given"
    assert s.video_slots == 4
    assert s.demo_meeting is False
    assert s.data_dir == tmp_path / "d"

    # Without flags the environment wins over the file; without env the file wins.
    assert load_settings(config_file=cfg, env=env).port == 7100
    assert load_settings(config_file=cfg, env={}).port == 7000


def test_default_config_file_in_data_dir(tmp_path: Path) -> None:
    write(tmp_path / "hoinghi.toml", 'announce_ip = "198.51.100.4"\nmax_participants = 50\n')
    s = load_settings(env={"HOINGHI_DATA_DIR": str(tmp_path)})
    assert s.announce_ip == "198.51.100.4"
    assert s.max_participants == 50
    s2 = load_settings(env={}, overrides={"data_dir": str(tmp_path)})
    assert s2.max_participants == 50
    # A data dir without the file just uses defaults.
    assert load_settings(env={}, overrides={"data_dir": tmp_path / "other"}).max_participants == 200


def test_explicit_config_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(config_file=tmp_path / "missing.toml", env={})


def test_unknown_key_in_file_is_named(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.toml", "port = 8080\nvideo_slot = 9\n")
    with pytest.raises(ConfigError) as err:
        load_settings(config_file=cfg, env={})
    assert "video_slot" in str(err.value)
    assert "video_slots" in str(err.value)  # lists what is known


def test_invalid_toml(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.toml", "port = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(config_file=cfg, env={})


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"HOINGHI_PORT": "eighty"}, "port"),
        ({"HOINGHI_PORT": "70000"}, "port"),
        ({"HOINGHI_VIDEO_SLOTS": "0"}, "video_slots"),
        ({"HOINGHI_DEMO_MEETING": "maybe"}, "demo_meeting"),
        ({"HOINGHI_LOG_FORMAT": "xml"}, "log_format"),
        ({"HOINGHI_LOG_LEVEL": "loud"}, "log_level"),
        ({"HOINGHI_ANNOUNCE_IP": "hub.example.vn"}, "announce_ip"),
        ({"HOINGHI_ANNOUNCE_IP": "0.0.0.0"}, "announce_ip"),
        ({"HOINGHI_PUBLIC_URL": "hub.example.vn"}, "public_url"),
        ({"HOINGHI_HOST": "  "}, "host"),
    ],
)
def test_bad_env_value_names_key_and_source(env: dict[str, str], key: str, tmp_path: Path) -> None:
    env = {**env, "HOINGHI_DATA_DIR": str(tmp_path)}
    with pytest.raises(ConfigError) as err:
        load_settings(env=env)
    message = str(err.value)
    assert message.startswith(key)
    assert "HOINGHI_" + key.upper() in message
    assert "expected" in message


def test_bad_file_value_names_file(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.toml", "port = true\n")
    with pytest.raises(ConfigError) as err:
        load_settings(config_file=cfg, env={})
    assert "port" in str(err.value) and "c.toml" in str(err.value)


def test_bad_flag_value_names_flag(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--port"):
        load_settings(env={}, overrides={"data_dir": tmp_path, "port": 123456})


def test_string_conversions(tmp_path: Path) -> None:
    env = {
        "HOINGHI_DATA_DIR": str(tmp_path),
        "HOINGHI_PORT": " 8443 ",
        "HOINGHI_TOKEN_TTL_S": "3600",
        "HOINGHI_DEMO_MEETING": "off",
        "HOINGHI_ANNOUNCE_IP": "",  # empty means unset
        "HOINGHI_LOG_FORMAT": "JSON",
    }
    s = load_settings(env=env)
    assert s.port == 8443 and s.token_ttl_s == 3600
    assert s.demo_meeting is False
    assert s.announce_ip is None
    assert s.log_format == "json"
    assert isinstance(s.data_dir, Path)


def test_unrelated_env_ignored(tmp_path: Path) -> None:
    s = load_settings(env={"HOINGHI_NOT_A_SETTING": "x", "PORT": "1"}, overrides={"data_dir": tmp_path})
    assert s.port == 8080


def test_unknown_override_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="bogus"):
        load_settings(env={}, overrides={"data_dir": tmp_path, "bogus": 1})


def test_opus_dtx_on_by_default_and_off_by_environment(tmp_path: Path) -> None:
    from server.app import media_settings

    on = load_settings(env={}, overrides={"data_dir": tmp_path})
    off = load_settings(env={"HOINGHI_OPUS_DTX": "false"}, overrides={"data_dir": tmp_path})
    assert on.opus_dtx is True and off.opus_dtx is False
    assert media_settings(on).opus_dtx is True and media_settings(off).opus_dtx is False
    with pytest.raises(ConfigError, match="opus_dtx"):
        load_settings(env={"HOINGHI_OPUS_DTX": "maybe"}, overrides={"data_dir": tmp_path})
