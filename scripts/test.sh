#!/usr/bin/env bash
# Set up a fresh virtual environment with CI's pinned CPU packages and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c constraints/cpu.txt -e ".[test]"
exec .venv/bin/python -m pytest "$@"
