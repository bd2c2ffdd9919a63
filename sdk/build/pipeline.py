"""`meshext build`: project folder -> pre-initialised Proxy-Wasm module."""

from __future__ import annotations

import importlib._bootstrap_external as bootstrap_external
import json
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import wasmtime

from meshext.errors import MeshextError
from meshext.sdk.build import analysis, fsimage, preinit, toolchain
from meshext.sdk.build.project import Project, load_project
from meshext.sdk.build.shim import build_shim

SDK_DIR = Path(__file__).resolve().parent.parent
MESHEXT_DIR = Path(__file__).resolve().parent.parent.parent / "meshext"
# Host-only parts of the SDK package that never go into a module.
SDK_HOST_ONLY = {"cli.py"}

Progress = Callable[[str], None]


@dataclass
class BuildResult:
    output: Path
    size: int
    imports: list[str]
    seconds: float
    shim_cached: bool
    stdlib_modules: int
    initial_memory: int
    build_log: list[tuple[str, str]]


def _sdk_files() -> dict[str, bytes]:
    files = {"app/meshext/__init__.py": (MESHEXT_DIR / "__init__.py").read_bytes()}
    for path in sorted(SDK_DIR.glob("*.py")):
        if path.name not in SDK_HOST_ONLY:
            files[f"app/meshext/sdk/{path.name}"] = path.read_bytes()
    return files


def _pyc(source_path: Path, module_path: str) -> bytes:
    # Compiled with docstrings and asserts stripped: less memory per VM.
    code = compile(source_path.read_bytes(), f"/{module_path}", "exec", dont_inherit=True, optimize=2)
    return bytes(bootstrap_external._code_to_timestamp_pyc(code, 0, 0))


def collect_files(project: Project, stdlib_dir: Path) -> tuple[dict[str, bytes], int]:
    """Everything the module's file system holds, and the number of stdlib modules."""
    sources = analysis.project_sources(project.root)
    trees = analysis.check_syntax(sources)
    analysis.check_entry(project.root, project.filter.module, project.filter.class_name, trees)

    files = {f"app/{source.path.relative_to(project.root).as_posix()}": source.path.read_bytes() for source in sources}
    files.update(_sdk_files())
    with tempfile.TemporaryDirectory() as staging:
        app_dir = Path(staging)
        for name, data in files.items():
            target = app_dir / name.removeprefix("app/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        imports = analysis.direct_imports(trees)
        analysis.check_imports(imports, app_dir, stdlib_dir)
        keep = {name.split(".")[0] for _, _, name, _ in imports} | {name for _, _, name, _ in imports}
        seeds = [project.filter.module, "meshext.sdk", "meshext.sdk._dispatch", *analysis.STARTUP_MODULES]
        closure = analysis.stdlib_closure(app_dir, stdlib_dir, seeds, keep)

    for name, path in closure.items():
        relative = path.relative_to(stdlib_dir).with_suffix(".pyc").as_posix()
        module_path = f"lib/python{toolchain.PYTHON_VERSION}/{relative}"
        files[module_path] = _pyc(path, module_path.removesuffix("c"))
    files["app/meshext-build.json"] = json.dumps(
        {"name": project.filter.name, "entry": project.filter.entry, "fail_policy": project.filter.fail_policy}
    ).encode()
    return files, len(closure)


_TRACEBACK_FRAME = re.compile(r'File "/app/([^"]+)", line (\d+)')


def _explain_preinit_failure(project: Project, log: list[tuple[str, str]]) -> MeshextError:
    text = "\n".join(message for _, message in log)
    frames = [(path, int(line)) for path, line in _TRACEBACK_FRAME.findall(text) if not path.startswith("meshext/")]
    last_line = next((line for line in reversed(text.splitlines()) if line.strip()), "unknown error")
    where = f"{project.root / frames[-1][0]}:{frames[-1][1]}" if frames else str(project.root)
    fix = "fix the error above; the filter module is imported at build time"
    missing = re.search(r"No module named '([^']+)'", last_line)
    if missing:
        module = missing.group(1)
        if module in analysis.UNLINKED_C_MODULES or module.split(".")[0] in analysis.UNLINKED_C_MODULES:
            fix = f"{module!r} is a C module meshext does not link; avoid the import that needs it"
        else:
            fix = f"{module!r} is not in the module's stdlib subset; vendor it into the project or avoid it"
    return MeshextError(f"importing the filter failed at build time:\n{text.rstrip()}", where=where, fix=fix)


def module_imports(module: bytes) -> list[str]:
    parsed = wasmtime.Module(wasmtime.Engine(), module)
    return [f"{item.module}.{item.name}" for item in parsed.imports]


def validate(path: Path) -> None:
    result = subprocess.run([toolchain.wasm_tools(), "validate", str(path)], capture_output=True, text=True)
    if result.returncode != 0:
        raise MeshextError(f"the built module does not validate: {result.stderr.strip()}", where=str(path),
                           fix="this is a meshext bug; report it with the filter that triggers it")


def build_filter(project_dir: Path, output: Path | None = None, progress: Progress | None = None) -> BuildResult:
    started = time.monotonic()
    say = progress or (lambda _message: None)
    project = load_project(project_dir)
    output = output or project.root / "build" / f"{project.filter.name}.wasm"

    say("checking the filter")
    python = toolchain.wasi_python()
    files, stdlib_modules = collect_files(project, python.stdlib_dir)

    say("compiling the shim (once per meshext version)")
    shim_path, shim_cached = build_shim()

    say(f"importing the filter at build time ({len(files)} files in the module's file system)")
    image = fsimage.build_image(files)
    try:
        result = preinit.preinitialize(shim_path.read_bytes(), image)
    except preinit.PreinitFailed as failure:
        raise _explain_preinit_failure(project, failure.log) from None

    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    temporary.write_bytes(result.module)
    try:
        validate(temporary)
        temporary.replace(output)
    finally:
        temporary.unlink(missing_ok=True)
    return BuildResult(
        output=output,
        size=len(result.module),
        imports=module_imports(result.module),
        seconds=time.monotonic() - started,
        shim_cached=shim_cached,
        stdlib_modules=stdlib_modules,
        initial_memory=result.memory_bytes,
        build_log=result.log,
    )
