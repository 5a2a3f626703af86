#!/bin/bash
set -o pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir .whl/*.whl || exit 1
export PYTHONPATH=$PWD HOINGHI_CACHE=$PWD/.devcache PYTHONUNBUFFERED=1
ulimit -n 65536 2>/dev/null
mkdir -p $OUT/r164b $OUT/r164s2
# the same meeting again (repeat), then floor + speaker only with a 100 Mbit/s hub uplink (the 2-core machine's configuration)
timeout 240 python3 -m server.cli rehearse --sites 164 --seconds 30 --processes 8 --workers 8 --join-rate 16 \
  --mix lan:1 --talkers 3 --lang en --out $OUT/r164b 2>&1 | grep "^joined" 
HOINGHI_VIDEO_SLOTS=2 HOINGHI_EGRESS_MBPS=100 timeout 240 python3 -m server.cli rehearse --sites 164 --seconds 30 --processes 8 --workers 8 \
  --join-rate 16 --mix lan:1 --talkers 3 --lang en --out $OUT/r164s2 2>&1 | grep "^joined"
