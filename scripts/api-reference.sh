#!/usr/bin/env bash
# Writes the filter author's API reference (meshext.sdk and meshext.testing),
# generated with pdoc from the docstrings, as HTML into DIR (default: the
# meshext cache, `reference/`), and prints the page to open.
#   scripts/api-reference.sh [DIR]
# `pdoc meshext.sdk meshext.testing` (in the venv) serves the same pages live.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${MESHEXT_VENV:-.venv}
out=${1:-$("$VENV/bin/python" -c "from meshext.paths import cache_root; print(cache_root() / 'reference')")}
# The SDK's host-side parts (the builder, the CLI) are not the author API.
"$VENV/bin/pdoc" --docformat restructuredtext -o "$out" \
    meshext.sdk '!meshext.sdk.builder' '!meshext.sdk.cli' meshext.testing
echo "API reference: $out/index.html"
