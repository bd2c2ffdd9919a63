#!/usr/bin/env bash
# The whole test suite, after installing what it needs.  `.ci/run` runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --test
PYTHON=${PYTHON:-python3}
exec "$PYTHON" -m pytest -q -rs "$@"
