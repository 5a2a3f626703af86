"""`hoinghi` CLI: the installed console script run as a subprocess, as operators run it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import types
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from server import cli
from server.auth import TokenService
from server.config import Settings
from server.storage import Storage

ROOT = Path(__file__).resolve().parent.parent
HOINGHI = ROOT / ".venv" / "bin" / "hoinghi"

pytestmark = pytest.mark.skipif(not HOINGHI.exists(), reason="run `pip install -e .` (scripts/setup.sh) first")


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("HOINGHI_")}
    base.update(env or {})
    return subprocess.run(
        [str(HOINGHI), *args], capture_output=True, text=True, env=base, cwd=cwd, timeout=60
    )


def token_from(url: str) -> str:
    fragment = urlsplit(url).fragment
    assert fragment.startswith("t=")
    return fragment[2:]


def test_token_for_site_verifies_with_same_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "data"
    r = run_cli("token", "--meeting", "demo", "--site", "commune-demo", "--role", "site",
                "--name", "Xã mẫu", "--data-dir", str(data), "--public-url", "https://hn.example.vn/")
    assert r.returncode == 0, r.stderr
    url = r.stdout.strip().splitlines()[-1]
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "hn.example.vn", "/site")
    assert parts.query == ""  # token only in the fragment, never sent to the server
    claims = TokenService(data / "secret.key").verify(token_from(url))
    assert (claims.meeting_id, claims.site_id, claims.role, claims.name) == (
        "demo", "commune-demo", "site", "Xã mẫu")
    assert "commune-demo" in r.stderr  # human line
    # The demo meeting was created in the same database the server will open.
    with Storage(data / "hoinghi.db") as s:
        assert s.get_meeting("demo") is not None


@pytest.mark.parametrize("role", ["hub", "operator"])
def test_hub_roles_link_to_hub_page(tmp_path: Path, role: str) -> None:
    r = run_cli("token", "--meeting", "demo", "--site", "hub", "--role", role,
                "--data-dir", str(tmp_path), "--announce-ip", "192.0.2.10", "--port", "9443")
    assert r.returncode == 0, r.stderr
    url = r.stdout.strip().splitlines()[-1]
    assert url.startswith("http://192.0.2.10:9443/hub#t=")
    assert TokenService(tmp_path / "secret.key").verify(token_from(url)).role == role


def test_settings_from_env_and_config_file(tmp_path: Path) -> None:
    data = tmp_path / "env-data"
    cfg = tmp_path / "hn.toml"
    cfg.write_text('public_url = "http://file.example:1"\ntoken_ttl_s = 600\n')
    r = run_cli("token", "--meeting", "demo", "--site", "s", "--role", "site", "--config", str(cfg),
                env={"HOINGHI_DATA_DIR": str(data), "HOINGHI_PUBLIC_URL": "http://env.example:2"})
    assert r.returncode == 0, r.stderr
    url = r.stdout.strip().splitlines()[-1]
    assert url.startswith("http://env.example:2/site#t=")  # env beats file
    claims = TokenService(data / "secret.key").verify(token_from(url))
    assert 500 <= claims.expires_at - time.time() <= 600 + 5  # ttl from the file


def test_explicit_ttl(tmp_path: Path) -> None:
    r = run_cli("token", "--meeting", "demo", "--site", "s", "--role", "site", "--ttl", "120",
                "--data-dir", str(tmp_path))
    assert r.returncode == 0, r.stderr
    claims = TokenService(tmp_path / "secret.key").verify(token_from(r.stdout.splitlines()[-1]))
    assert 100 <= claims.expires_at - time.time() <= 125


def test_unknown_meeting_is_plain_error(tmp_path: Path) -> None:
    r = run_cli("token", "--meeting", "nope", "--site", "s", "--role", "site", "--data-dir", str(tmp_path))
    assert r.returncode == 2
    assert "nope" in r.stderr and "does not exist" in r.stderr
    assert "Traceback" not in r.stderr
    assert r.stdout == ""


def test_demo_disabled_means_no_demo_meeting(tmp_path: Path) -> None:
    r = run_cli("token", "--meeting", "demo", "--site", "s", "--role", "site", "--data-dir", str(tmp_path),
                env={"HOINGHI_DEMO_MEETING": "false"})
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_uninvited_site_refused(tmp_path: Path) -> None:
    with Storage(tmp_path / "hoinghi.db") as s:
        s.ensure_demo()
        s.set_meeting_sites("demo", ["hub"])
    r = run_cli("token", "--meeting", "demo", "--site", "commune-demo", "--role", "site",
                "--data-dir", str(tmp_path))
    assert r.returncode == 2 and "not invited" in r.stderr
    ok = run_cli("token", "--meeting", "demo", "--site", "hub", "--role", "hub", "--data-dir", str(tmp_path))
    assert ok.returncode == 0, ok.stderr


def test_bad_config_is_plain_error(tmp_path: Path) -> None:
    (tmp_path / "hoinghi.toml").write_text("prot = 8080\n")
    r = run_cli("token", "--meeting", "demo", "--site", "s", "--role", "site", "--data-dir", str(tmp_path))
    assert r.returncode == 2
    assert "prot" in r.stderr and "Traceback" not in r.stderr


def test_missing_config_file(tmp_path: Path) -> None:
    r = run_cli("serve", "--config", str(tmp_path / "absent.toml"), "--data-dir", str(tmp_path))
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr


def test_bad_role_rejected_by_argparse(tmp_path: Path) -> None:
    r = run_cli("token", "--meeting", "demo", "--site", "s", "--role", "admin", "--data-dir", str(tmp_path))
    assert r.returncode == 2 and "admin" in r.stderr


def test_python_module_entry_point(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "server.cli", "token", "--meeting", "demo", "--site", "s", "--role", "site",
         "--data-dir", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("HOINGHI_")},
    )
    assert r.returncode == 0, r.stderr
    assert "/site#t=" in r.stdout.splitlines()[-1]


def test_serve_passes_loaded_settings_to_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # server/app.py belongs to another module; this checks only the CLI's side of the
    # contract: `run(settings)` receives the merged settings.
    received: list[Settings] = []
    monkeypatch.setitem(sys.modules, "server.app", types.SimpleNamespace(run=received.append))
    for key in [k for k in os.environ if k.startswith("HOINGHI_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("HOINGHI_VIDEO_SLOTS", "6")
    rc = cli.main(["serve", "--host", "127.0.0.1", "--port", "0", "--data-dir", str(tmp_path),
                   "--announce-ip", "10.1.2.3"])
    assert rc == 0
    (s,) = received
    assert (s.host, s.port, s.data_dir, s.announce_ip, s.video_slots) == (
        "127.0.0.1", 0, tmp_path, "10.1.2.3", 6)
    assert s.public_url == "http://10.1.2.3:0"


def test_sites_import_sample_and_export(tmp_path: Path) -> None:
    r = run_cli("sites", "sample", "--data-dir", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "164 in the registry" in r.stderr
    out = run_cli("sites", "export", "--data-dir", str(tmp_path))
    assert out.returncode == 0 and out.stdout.splitlines()[0] == "id,name,level,parent_id"
    assert len(out.stdout.splitlines()) == 165

    bad = tmp_path / "bad.csv"
    bad.write_text("id,name,level,parent_id\nxa-x,Xã X,xã,khong-co\n", encoding="utf-8")
    r = run_cli("sites", "import", str(bad), "--data-dir", str(tmp_path))
    assert r.returncode == 2 and "nothing changed" in r.stderr and "line 2" in r.stderr and "Traceback" not in r.stderr
    good = tmp_path / "good.csv"
    good.write_text("id,name,level,parent_id\nhub,Trung tâm,province,\nd,Huyện,district,hub\n", encoding="utf-8")
    r = run_cli("sites", "import", str(good), "--replace", "--data-dir", str(tmp_path))
    assert r.returncode == 0 and "1 added, 1 updated, 163 removed; 2 in the registry" in r.stderr
    r = run_cli("sites", "import", str(tmp_path / "absent.csv"), "--data-dir", str(tmp_path))
    assert r.returncode == 2 and "does not exist" in r.stderr
