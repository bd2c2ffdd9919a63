#!/usr/bin/env bash
# The whole test suite, after installing what it needs: the linter, the type
# checker, then pytest, then (without arguments) the cold-code self-test.
# `.ci/run` runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --test
VENV=${MESHEXT_VENV:-.venv}
bash scripts/check.sh
bash scripts/api-reference.sh
"$VENV/bin/python" -m pytest -q -rs "$@"
if [ "$#" -eq 0 ]; then
  # The cold-code self-test (sdk/builder/coldcode.py): the SDK's, the examples'
  # and the conformance tests again, every module built with CPython itself
  # run by the interpreter inside the module.
  MESHEXT_INTERPRET_ALL=1 exec "$VENV/bin/python" -m pytest -q -rs -p no:cacheprovider \
    tests/sdk tests/examples tests/runtime/test_runtime_conformance.py
fi
