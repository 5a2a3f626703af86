#!/usr/bin/env bash
# Run the test suite in the project virtualenv; extra arguments go to pytest
# (e.g. scripts/test.sh -m "not browser" -k storage).
#
# With no arguments, the forwarding tests run a second time on the Python per-copy path
# (HOINGHI_NATIVE=0): the native one (media/_fastpath.c) is what runs when it is built, the
# Python one where no compiler was present at install time, and both must forward correctly.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "$#" -gt 0 ]; then
    exec .venv/bin/python -m pytest -q "$@"
fi
.venv/bin/python -c 'import media.fastpath as f; print("per-copy path:", "native" if f.NATIVE else "Python (native module not built)")'
.venv/bin/python -m pytest -q
echo "again on the Python per-copy path (HOINGHI_NATIVE=0):"
HOINGHI_NATIVE=0 exec .venv/bin/python -m pytest -q -p no:cacheprovider \
    tests/media/test_forwarding.py tests/media/test_temporal.py tests/media/test_packets.py
