#!/usr/bin/env bash
# Start the server from a checkout; arguments go to `hoinghi serve`
# (e.g. scripts/run.sh --announce-ip 10.0.0.5 --port 8080).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/hoinghi serve "$@"
