#!/usr/bin/env bash
# Set up a fresh virtual environment with the pinned CPU packages and run the main job on the
# embedded tiny default.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c constraints/cpu.txt -e .
exec .venv/bin/python scripts/layer_demo.py "$@"
