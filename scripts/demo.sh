#!/usr/bin/env bash
# Set up a fresh virtual environment with the pinned CPU packages and run the main job on the
# embedded tiny default: render the demo dataset (no download), then distil the tiny Wan student.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c constraints/cpu.txt -e .
[ -f data/demo/manifest.json ] || .venv/bin/psa-train data make-demo --output data/demo
exec .venv/bin/psa-train fit --config recipes/tiny_distill.yaml "$@"
