#!/usr/bin/env bash
# Create .venv if needed, install blocklab with its test extras, run the suite.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
# torch 2.13.0 first: on a machine without CUDA this takes the CPU build and
# keeps pip from pulling a multi-GB CUDA build for the unpinned range.
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e '.[test]'
exec .venv/bin/python -m pytest -q "$@"
