#!/usr/bin/env bash
# The main job: install everything, then `meshext up` (a whole mesh with
# Python extensions on loopback, left running; `meshext down` stops it).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec "${MESHEXT_VENV:-.venv}/bin/meshext" up "$@"
