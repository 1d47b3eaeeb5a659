#!/usr/bin/env bash
# Set up .venv/ (idempotent), Debian's Chromium for the browser tests, then run the test suite.
# Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
# tests/test_serve_browser.py drives Debian's Chromium through Playwright (never `playwright install`:
# browsers cannot be downloaded). Without root and without Chromium those tests skip with the reason.
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq chromium
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    sudo apt-get update -qq && sudo apt-get install -y -qq chromium
  else
    echo "test: /usr/bin/chromium missing and no root: the browser tests will skip"
  fi
fi
cd "$ROOT"
exec .venv/bin/python -m pytest "$@"
