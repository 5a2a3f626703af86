"""`hoinghi rehearse --compare-janus` with 3 unshaped sites: the same load reaches Janus VideoRoom.

Skipped, with the reason, when Janus is not installed or does not start. Otherwise both SFUs
must forward about the same number of packets (the same feeds at the same layers: the stage
at the top layer, thumbnails at the lowest, the same audio) with no loss on loopback, and
the report must carry both columns.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pytest

from loadtest.janus_client import START_SCRIPT
from loadtest.rehearse import rehearse, write_outputs
from loadtest.rehearse_args import add_arguments

pytestmark = pytest.mark.slow


async def test_same_load_against_janus(tmp_path: Path) -> None:
    if shutil.which("janus") is None or not START_SCRIPT.exists():
        pytest.skip(f"Janus is not installed here (janus binary or {START_SCRIPT} missing)")
    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["--server", "inprocess", "--sites", "3", "--seconds", "4", "--join-rate", "4", "--settle", "5",
                         "--mix", "lan", "--compare-janus", "--lang", "en", "--out", str(tmp_path)])
    args.command_line = "test"
    result = await rehearse(args)
    j = result["janus"]
    if j.get("error", "").startswith("Janus did not start"):
        pytest.skip(j["error"])
    assert not j.get("error"), j
    assert j["publishing"] == 3 and j["subscribed"] == 3, j
    assert j["forwarded"] > 0 and j["cpu_s"] is not None and j["us_per_forwarded_packet"] > 0
    assert (j["loss_pct"] or 0) < 2.0, j
    assert all(x["rx_kbps"] > 0 for x in j["per_site"]), j["per_site"]
    h = result["server"]
    ratio = h["forwarded_at_sites_per_s"] / j["forwarded_per_s"]
    print(f"forwarded per s: hoinghi {h['forwarded_at_sites_per_s']}, Janus {j['forwarded_per_s']}")
    assert 0.6 < ratio < 1.6, (h["forwarded_at_sites_per_s"], j["forwarded_per_s"])
    _, html = write_outputs(result, tmp_path)
    text = html.read_text(encoding="utf-8")
    assert "Compared with Janus VideoRoom" in text and "Janus" in text
