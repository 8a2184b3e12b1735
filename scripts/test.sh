#!/usr/bin/env bash
# The README's test command: creates .venv on first use, then runs the test suite.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -k zoo -x`).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/env.sh
source "$ROOT/scripts/env.sh"
cd "$ROOT"
exec python -m pytest "$@"
