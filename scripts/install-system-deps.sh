#!/usr/bin/env bash
# System packages the tests need (Debian).
# - chromium: the browser test of the Jupyter widgets (tests/browser) drives Debian's
#   Chromium through the playwright package; `playwright install` is never used.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
fi

if [ ! -x /usr/bin/chromium ]; then
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -q
    $SUDO apt-get install -y -q chromium
fi
