#!/usr/bin/env bash
# Prepare a working checkout: virtualenv, hoinghi installed editable with test extras (and
# its native forwarding path compiled, when gcc and the Python headers are present),
# Debian's Chromium for the browser tests and coturn for the TURN test. Safe to run repeatedly: pip is skipped
# when pyproject.toml has not changed since the last successful install.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV=.venv

if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating $VENV with $PYTHON"
    "$PYTHON" -m venv "$VENV"
fi

stamp="$VENV/.hoinghi-setup-stamp"
# the native forwarding path (media/_fastpath.c) is compiled by this install: a change to it
# or to its build hook reinstalls too
want="$(cat pyproject.toml setup.py media/_fastpath.c | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || [ ! -x "$VENV/bin/hoinghi" ]; then
    echo "setup: installing hoinghi and test dependencies into $VENV"
    "$VENV/bin/python" -m pip install --quiet -e '.[test]'
    echo "$want" > "$stamp"
fi

# Browser tests drive the distribution's Chromium rather than Playwright's download:
# it is patched by Debian security updates and needs no access to Playwright's CDN.
if [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = "0" ]; then
        echo "setup: installing chromium"
        apt-get update -qq && apt-get install -y --no-install-recommends chromium
    else
        echo "setup: /usr/bin/chromium is missing; browser tests will be skipped. Install it with:" >&2
        echo "  sudo apt-get update -qq && sudo apt-get install -y --no-install-recommends chromium" >&2
    fi
fi

# The TURN-over-TLS test (tests/test_turn.py) starts Debian's coturn on loopback.
if ! command -v turnserver >/dev/null 2>&1; then
    if [ "$(id -u)" = "0" ]; then
        echo "setup: installing coturn"
        apt-get update -qq && apt-get install -y --no-install-recommends coturn
    else
        echo "setup: coturn is missing; the TURN test will be skipped. Install it with:" >&2
        echo "  sudo apt-get update -qq && sudo apt-get install -y --no-install-recommends coturn" >&2
    fi
fi
