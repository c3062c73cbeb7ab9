#!/usr/bin/env bash
# Create .venv in the repository and install blocklab into it, once.
# TORCH_SPEC picks the torch build (default torch==2.13.0; on a machine whose
# pip finds no local CPU wheel, point it at the build you want).
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:-test}
stamp=".venv/.blocklab-installed-$extras"
if [[ -f "$stamp" && "$stamp" -nt pyproject.toml ]]; then
  exit 0
fi
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip >/dev/null
# torch first: a pinned version keeps pip from resolving the open range
# in pyproject.toml to a multi-GB CUDA build.
.venv/bin/pip install -q "${TORCH_SPEC:-torch==2.13.0}"
.venv/bin/pip install -q -e ".[$extras]"
touch "$stamp"
