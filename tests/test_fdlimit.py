"""The open-files check at `hoinghi serve` start, in child processes with lowered limits
(the limit is per process: the test process's own is left alone)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _child(soft: int, hard: int, code: str) -> tuple[str, str]:
    prelude = (
        "import resource, json\n"
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard}))\n"
    )
    out = subprocess.run([sys.executable, "-c", prelude + code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout, out.stderr


def test_soft_limit_is_raised_to_the_hard_limit():
    out = _child(256, 4096, (
        "from server.fdlimit import raise_open_files_limit\n"
        "c = raise_open_files_limit(164, 2)\n"
        "print(json.dumps([c.soft, c.hard, c.needed, c.warning, resource.getrlimit(resource.RLIMIT_NOFILE)[0]]))\n"
    ))
    soft, hard, needed, warning, now = json.loads(out[0].strip().splitlines()[-1])
    assert (soft, hard, now) == (4096, 4096, 4096)
    assert needed == 64 + 164 * 4 and warning is None


def test_a_hard_limit_too_low_for_the_sites_is_reported():
    out = _child(200, 300, (
        "from server.fdlimit import raise_open_files_limit\n"
        "c = raise_open_files_limit(164, 1)\n"
        "print(json.dumps([c.soft, c.needed, c.warning]))\n"
    ))
    soft, needed, warning = json.loads(out[0].strip().splitlines()[-1])
    assert soft == 300 and needed > 300
    assert "open-files limit is 300" in warning and "LimitNOFILE" in warning


def test_serve_warns_at_start(tmp_path):
    # the CLI's check, with the settings `hoinghi serve` would use (it is called before run)
    out = _child(200, 300, (
        "from server.cli import check_open_files\n"
        "from server.config import Settings\n"
        f"check_open_files(Settings(data_dir=__import__('pathlib').Path({str(tmp_path)!r}), announce_ip='127.0.0.1', max_participants=200))\n"
        "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n"
    ))
    assert "hoinghi: warning: the open-files limit is 300" in out[1]
    assert out[0].strip() == "300"
