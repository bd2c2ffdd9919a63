#!/usr/bin/env bash
# Installs everything, then builds a Python filter and runs it in a real Envoy.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec "${MESHEXT_VENV:-.venv}/bin/python" scripts/demo.py
