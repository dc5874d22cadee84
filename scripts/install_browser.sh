#!/usr/bin/env bash
# Headless Chromium for the demo's browser test (tests/test_app.py), from Debian's packages.
# Playwright drives this system browser; it never downloads one of its own.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install_browser: chromium is missing and this is not root: run 'sudo apt-get install chromium'" \
         "(tests/test_app.py is skipped without it)" >&2
    exit 0
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
