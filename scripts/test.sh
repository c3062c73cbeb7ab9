#!/usr/bin/env bash
# Run the test suite from the repository's .venv, creating it on first use.
# Extra arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bash "$root/scripts/setup.sh" test
cd "$root"
exec .venv/bin/python -m pytest -q "$@"
