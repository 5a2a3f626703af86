"""locust headless with 3 synthetic-site users for a few seconds against a real server process.

The locust run starts its own `hoinghi serve` (--hoinghi-serve: temp SQLite, loopback) and
must exit 0 with every user's join, connect and first media in the stats CSV and no failures.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOCUST = Path(sys.executable).parent / "locust"

pytestmark = pytest.mark.slow


def test_locust_headless_three_sites(tmp_path: Path) -> None:
    users = 3
    cmd = [str(LOCUST), "-f", str(ROOT / "loadtest" / "locustfile.py"), "--headless", "-u", str(users), "-r", str(users),
           "-t", "7s", "--hoinghi-serve", "--csv", str(tmp_path / "run"), "--only-summary", "--stop-timeout", "5"]
    env = dict(os.environ, LOCUST_SKIP_MONKEY_PATCH="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(tmp_path / "run_stats.csv", newline="") as f:
        rows = {r["Name"]: r for r in csv.DictReader(f)}
    for name in ("join", "connect", "first media"):
        assert name in rows, rows.keys()
        assert int(rows[name]["Request Count"]) == users, rows[name]
        assert int(rows[name]["Failure Count"]) == 0, rows[name]
        assert float(rows[name]["Average Response Time"]) > 0
    # media health was reported (every 2 s per user) and carried bytes
    assert int(rows["media"]["Request Count"]) >= users
    assert int(rows["media"]["Failure Count"]) == 0, (tmp_path / "run_failures.csv").read_text()
    assert float(rows["media"]["Average Content Size"]) > 0


def test_locust_refuses_monkey_patching(tmp_path: Path) -> None:
    """Without LOCUST_SKIP_MONKEY_PATCH=1 the locustfile stops with the reason, not a hang."""
    env = {k: v for k, v in os.environ.items() if k != "LOCUST_SKIP_MONKEY_PATCH"}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run([str(LOCUST), "-f", str(ROOT / "loadtest" / "locustfile.py"), "--headless", "-u", "1", "-t", "1s"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "LOCUST_SKIP_MONKEY_PATCH=1" in proc.stdout + proc.stderr
