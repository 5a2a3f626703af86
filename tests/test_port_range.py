"""UDP port range for media: every ICE host candidate the server offers lies in the range a
firewall opened, a full range is refused with a reason, and the setting comes from file,
environment or flag like every other."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from loadtest.peer import SyntheticSite
from media.network import PortRange, PortRangeExhausted
from server.app import build_app, media_settings
from server.auth import TokenService
from server.cli import build_parser, _settings
from server.config import ConfigError, Settings, load_settings
from server.storage import Storage

CANDIDATE = re.compile(r"^a=candidate:\S+ \d+ udp \d+ (\S+) (\d+) typ host", re.MULTILINE)


def _free_range(size: int) -> tuple[int, int]:
    """A run of `size` UDP ports on 127.0.0.1 that are free right now."""
    for base in range(42000 + (time.monotonic_ns() // 1000) % 3000, 60000, size + 7):
        socks = []
        try:
            for p in range(base, base + size):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base, base + size - 1
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError("no free port range")


async def _serve(tmp_path: Path, low: int, high: int):
    settings = Settings(data_dir=tmp_path, host="127.0.0.1", port=0, announce_ip="127.0.0.1", rtc_port_min=low, rtc_port_max=high)
    storage = Storage(settings.db_path)
    storage.ensure_demo()
    tokens = TokenService(settings.secret_path)
    server = TestServer(await build_app(settings, storage, tokens), host="127.0.0.1", port=0)
    await server.start_server()
    return server, storage, tokens, f"http://127.0.0.1:{server.port}"


def _answer_ports(site: SyntheticSite) -> list[int]:
    answer = next(m for m in site.messages if m.get("type") == "answer")
    return [int(port) for _, port in CANDIDATE.findall(answer["sdp"])]


@pytest.mark.slow
async def test_candidates_in_the_answer_are_in_the_range_and_media_flows(tmp_path):
    low, high = _free_range(6)
    server, storage, tokens, url = await _serve(tmp_path, low, high)
    hub = SyntheticSite(url, tokens.issue("demo", "hub", "hub", 600), fps=15)
    sites = [SyntheticSite(url, tokens.issue("demo", f"xa-{i}", "site", 600), publish_video=False, publish_audio=False) for i in range(2)]
    try:
        for peer in (hub, *sites):
            await peer.join()
            await peer.start_media()
        per_site = [set(_answer_ports(peer)) for peer in (hub, *sites)]
        assert all(len(p) == 1 for p in per_site), per_site  # one socket per site (bundle)
        ports = [p for s in per_site for p in s]
        assert len(set(ports)) == 3  # distinct sockets
        assert all(low <= p <= high for p in ports), (ports, low, high)
        hub_id = hub.joined["participant"]["id"]
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not all(s.track_for(hub_id) and s.track_for(hub_id).frames > 5 for s in sites):
            await asyncio.sleep(0.2)
        assert all(s.track_for(hub_id).frames > 5 for s in sites)
    finally:
        for peer in (hub, *sites):
            await peer.close()
        await server.close()
        storage.close()


@pytest.mark.slow
async def test_full_range_refuses_the_offer_with_a_reason(tmp_path):
    low, high = _free_range(2)
    server, storage, tokens, url = await _serve(tmp_path, low, high)
    taken = []
    for p in (low, high):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", p))
        taken.append(s)
    site = SyntheticSite(url, tokens.issue("demo", "xa-1", "site", 600), publish_video=False, publish_audio=False)
    try:
        await site.join()
        attempt = asyncio.ensure_future(site.start_media())
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not site.errors:
            await asyncio.sleep(0.1)
        attempt.cancel()
        assert site.errors, "the offer got neither an answer nor an error"
        error = site.errors[0]
        assert error["code"] == "sdp_invalid" and not error["fatal"]
        assert "no free UDP port" in error["message"] and f"{low}-{high}" in error["message"]
        assert not any(m.get("type") == "answer" for m in site.messages)
        # once a port frees up, the next connection of the site gets it
        taken.pop().close()
        await site.close()
        site = SyntheticSite(url, tokens.issue("demo", "xa-1", "site", 600), publish_video=False, publish_audio=False)
        await site.join()
        await site.start_media()
        assert set(_answer_ports(site)) == {high}
    finally:
        for s in taken:
            s.close()
        await site.close()
        await server.close()
        storage.close()


def test_port_range_binds_only_inside_and_reports_exhaustion() -> None:
    low, high = _free_range(3)
    ports = PortRange(low, high)
    socks = [ports.bind(socket.AF_INET, "127.0.0.1") for _ in range(3)]
    try:
        assert sorted(s.getsockname()[1] for s in socks) == [low, low + 1, high]
        with pytest.raises(PortRangeExhausted):
            ports.bind(socket.AF_INET, "127.0.0.1")
        assert ports.exhausted == 1
    finally:
        for s in socks:
            s.close()
    with pytest.raises(ValueError):
        PortRange(5000, 4000)


def test_setting_from_file_env_and_flags(tmp_path: Path) -> None:
    (tmp_path / "hoinghi.toml").write_text("rtc_port_min = 40000\nrtc_port_max = 40999\n")
    s = load_settings(env={}, overrides={"data_dir": tmp_path})
    assert (s.rtc_port_min, s.rtc_port_max) == (40000, 40999)
    assert media_settings(s).port_range is not None and str(media_settings(s).port_range) == "40000-40999"
    s = load_settings(env={"HOINGHI_RTC_PORT_MIN": "41000", "HOINGHI_RTC_PORT_MAX": "41099"}, overrides={"data_dir": tmp_path})
    assert (s.rtc_port_min, s.rtc_port_max) == (41000, 41099)
    args = build_parser().parse_args(["serve", "--data-dir", str(tmp_path), "--rtc-port-min", "42000", "--rtc-port-max", "42010"])
    s = _settings(args)
    assert (s.rtc_port_min, s.rtc_port_max) == (42000, 42010)
    assert media_settings(load_settings(env={}, overrides={"data_dir": tmp_path / "none"})).port_range is None


@pytest.mark.parametrize(
    "env, words",
    [
        ({"HOINGHI_RTC_PORT_MIN": "40000"}, "both ends"),
        ({"HOINGHI_RTC_PORT_MIN": "41000", "HOINGHI_RTC_PORT_MAX": "40000"}, "rtc_port_min <= rtc_port_max"),
        ({"HOINGHI_RTC_PORT_MIN": "80", "HOINGHI_RTC_PORT_MAX": "90"}, "1024"),
        ({"HOINGHI_RTC_PORT_MAX": "abc", "HOINGHI_RTC_PORT_MIN": "1"}, "HOINGHI_RTC_PORT_MAX"),
    ],
)
def test_bad_range_is_a_clear_config_error(tmp_path: Path, env: dict, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(env=env, overrides={"data_dir": tmp_path})
    assert words in str(err.value)


def test_turn_settings_need_a_secret(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(env={"HOINGHI_TURN_URLS": "turns:turn.example.org:5349?transport=tcp"}, overrides={"data_dir": tmp_path})
    assert "turn_secret" in str(err.value)
    s = load_settings(
        env={"HOINGHI_TURN_URLS": "stun:stun.example.org, turns:turn.example.org:5349?transport=tcp", "HOINGHI_TURN_SECRET": "x"},
        overrides={"data_dir": tmp_path},
    )
    assert s.turn_urls == ["stun:stun.example.org", "turns:turn.example.org:5349?transport=tcp"]
    with pytest.raises(ConfigError):
        load_settings(env={"HOINGHI_TURN_URLS": "http://nope"}, overrides={"data_dir": tmp_path})
