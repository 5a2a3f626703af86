#!/usr/bin/env bash
# Run the test suite in the project virtualenv; extra arguments go to pytest
# (e.g. scripts/test.sh -m "not browser" -k storage).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
