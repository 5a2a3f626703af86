#!/bin/bash
# 164 synthetic sites with thumbnails (floor + 8 video slots, 3 audio) on the 16-core device machine
set -o pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir .whl/*.whl || exit 1
export PYTHONPATH=$PWD HOINGHI_CACHE=$PWD/.devcache PYTHONUNBUFFERED=1
python3 -c "import aiortc, av, uvloop, pylibsrtp; print('imports ok', av.__version__)" || exit 1
nproc; python3 --version; uname -r
ulimit -n 65536 2>/dev/null; ulimit -n
mkdir -p $OUT/r164
timeout 420 python3 -m server.cli rehearse --sites 164 --seconds 30 --processes 8 --workers 8 --join-rate 16 \
  --mix lan:1 --talkers 3 --lang en --out $OUT/r164 2>&1 | tee $OUT/log.txt | grep -v "^\[ *[0-9.]*s\]" | tail -40
