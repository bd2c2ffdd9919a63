#!/usr/bin/env bash
# The linter over the product's code and its tests, the type checker over the product (scripts/test.sh
# runs this before pytest).  Configuration: [tool.ruff] and [tool.mypy] in
# pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${MESHEXT_VENV:-.venv}
echo "==> ruff check"
"$VENV/bin/ruff" check sdk runtime registry control src examples extensions benchmarks tests
echo "==> mypy"
# -p checks the installed import tree (src/meshext and the rooms it links),
# so every file is checked under its real module name.
"$VENV/bin/mypy" -p meshext
