#!/bin/bash
# 164 synthetic sites on the 16-core device machine on the tree of 2026-11-26 (third session):
# native per-copy path, then the Python path on the same machine. Carried: .whl (wheels for
# Python 3.12), .devcache (the pre-encoded synthetic media, FORMAT_VERSION 4). From the repo root.
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir .whl/*.whl || exit 1
export PYTHONPATH=$PWD HOINGHI_CACHE=$PWD/.devcache PYTHONUNBUFFERED=1
nproc; python3 --version; gcc --version | head -1
python3 setup.py -q build_ext --inplace 2>&1 | tail -3
python3 -c "import aiortc, av, uvloop, pylibsrtp; from media import fastpath; from loadtest.media_source import SyntheticMedia as S; m=S.load(); print('imports ok', av.__version__, 'native', fastpath.NATIVE, 'media cached', m.loaded_from_cache)" || exit 1
ulimit -n 65536 2>/dev/null
R="python3 -m server.cli rehearse --sites 164 --seconds 30 --processes 8 --workers 8 --join-rate 16 --mix lan:1 --talkers 3 --lang en"
s=$SECONDS; timeout 200 $R --out $OUT/thumbs 2>&1 | grep -v "^\[ *[0-9.]*s\]" | tail -25; echo "thumbs took $((SECONDS-s)) s"
s=$SECONDS; HOINGHI_NATIVE=0 timeout 200 $R --out $OUT/thumbs_py 2>&1 | grep "^joined\|loss\|CPU\|per-copy"; echo "thumbs_py took $((SECONDS-s)) s"
