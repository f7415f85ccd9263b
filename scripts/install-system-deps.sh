#!/usr/bin/env bash
# System packages the tests need (Debian): nothing yet beyond Python.
set -euo pipefail
exit 0
