#!/usr/bin/env bash
# The whole test suite, after installing what it needs: the linter, the type
# checker, then pytest.  `.ci/run` runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --test
VENV=${MESHEXT_VENV:-.venv}
bash scripts/check.sh
bash scripts/api-reference.sh
exec "$VENV/bin/python" -m pytest -q -rs "$@"
