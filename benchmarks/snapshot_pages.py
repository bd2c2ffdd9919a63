"""What each VM of a filter copies from its module: the snapshot's non-zero pages (issue 16).

    python benchmarks/snapshot_pages.py [PROJECT ...] [--import MODULE ...]

Every Envoy VM of a module that Envoy calls into (concurrency + 1, and a
transient canary; the base VM kept for cloning is never called, so its
deferred snapshot is never restored) starts from the module's snapshot:
CPython's static data and the heap pre-initialisation left, with every
module imported at build time.  For each filter project (default: the
header filter of sdk_header_filter.py, examples/header-policy, the
telemetry filter) this builds the module and prints its size, its initial
memory, the 4 KiB pages its snapshot writes (what each such VM holds
beyond zero pages), and the stdlib
modules in its ``sys.modules`` when its VM starts (the filter's root class,
subclassed by a probe that logs them from ``on_vm_start``).

``--import MODULE`` (repeatable) also builds the first project with each
extra top-level import (``json``, ``typing``, ``dataclasses`` ...): the
difference in pages is what that module costs every VM.  Builds are
deterministic up to CPython's string-hash seed (a page either way).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import tempfile
import tomllib
from pathlib import Path

from meshext import wasm_binary
from meshext.errors import MeshextError
from meshext.sdk.builder import BuildResult, build_filter
from meshext.sdk.builder.shim import ALWAYS_BUILTIN, BUILTIN_MODULES
from meshext.testing import Host

HERE = Path(__file__).resolve().parent
DEFAULT_PROJECTS = [HERE / "filters" / "header", HERE.parent / "examples" / "header-policy",
                    HERE.parent / "extensions" / "telemetry" / "filter"]
PAGE = 4096
PROBE = '''
import sys

from meshext.sdk import log
from {module} import {name} as _Measured


class MeasuredRoot(_Measured):
    def on_vm_start(self, vm_config):
        log.warn("sys.modules " + " ".join(sorted(sys.modules)))
        return super().on_vm_start(vm_config)
'''


def nonzero_pages(module: bytes) -> int:
    """The 4 KiB pages of linear memory the module's snapshot writes a non-zero byte to in
    every VM it is restored in (its file data V8 keeps once per module)."""
    runs = wasm_binary.initial_memory(wasm_binary.parse_sections(module))
    if runs is None:
        raise SystemExit("the module has a data segment this script does not read")
    pages = set()
    for offset, data in runs:
        for page in range(offset // PAGE, (offset + len(data) - 1) // PAGE + 1):
            start, end = max(offset, page * PAGE) - offset, min(offset + len(data), (page + 1) * PAGE) - offset
            if data[start:end].strip(b"\0"):
                pages.add(page)
    return len(pages)


def copy_project(project: Path, into: Path, extra_import: str | None = None) -> Path:
    """The project, its tests and build output left out, ``extra_import`` added to its entry module."""
    copy = into / project.name
    shutil.copytree(project, copy, ignore=shutil.ignore_patterns("build", "tests", "__pycache__", ".*"))
    if extra_import:
        entry = copy / f"{entry_of(copy)[0]}.py"
        entry.write_text(f"import {extra_import}\n" + entry.read_text())
    return copy


def entry_of(project: Path) -> tuple[str, str]:
    module, _, name = tomllib.loads((project / "meshext.toml").read_text())["filter"]["entry"].partition(":")
    return module, name


def loaded_modules(project: Path, scratch: Path) -> list[str]:
    """``sys.modules`` of a VM of ``project``'s module as it starts (its configuration empty)."""
    probe = copy_project(project, scratch / "probe")
    module, name = entry_of(probe)
    (probe / "meshext_probe.py").write_text(PROBE.format(module=module, name=name))
    settings = (probe / "meshext.toml").read_text()
    (probe / "meshext.toml").write_text(settings.replace(f"{module}:{name}", "meshext_probe:MeasuredRoot"))
    built = build_filter(probe, scratch / "probe.wasm")
    host = Host()
    with contextlib.suppress(MeshextError):  # a filter that needs a configuration has logged at VM start already
        host.load(built.output)
    line = next(line for line in host.log_lines() if line.startswith("sys.modules "))
    return line.split()[1:]


def stdlib_modules(loaded: list[str], project: Path) -> list[str]:
    """The Python stdlib modules among ``loaded`` (frozen ones too): not the module's C modules,
    meshext or the project's own."""
    own = {path.stem for path in project.rglob("*.py")} | {"meshext", "meshext_probe", "__main__"}
    c_modules = set(BUILTIN_MODULES) | set(ALWAYS_BUILTIN)
    return [name for name in loaded if name.split(".")[0] not in own and name not in c_modules]


def measure(project: Path, scratch: Path) -> tuple[BuildResult, int]:
    built = build_filter(project, scratch / f"{project.name}.wasm")
    return built, nonzero_pages(built.output.read_bytes())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("projects", nargs="*", type=Path, default=DEFAULT_PROJECTS)
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE")
    arguments = parser.parse_args()
    print("| project | module MB | initial memory MiB | non-zero 4 KiB pages (MiB) | stdlib modules loaded |")
    print("| --- | --- | --- | --- | --- |")
    for project in arguments.projects:
        with tempfile.TemporaryDirectory() as scratch:
            built, pages = measure(project.resolve(), Path(scratch))
            loaded = stdlib_modules(loaded_modules(project.resolve(), Path(scratch)), project)
        print(f"| {project} | {built.size / 1e6:.2f} | {built.initial_memory / 2**20:.2f} "
              f"| {pages} ({pages * PAGE / 2**20:.2f}) | {len(loaded)}: {' '.join(loaded)} |")
    if arguments.imports:
        first = arguments.projects[0].resolve()
        print(f"\n| {first.name} with one more import | module MB | non-zero pages | pages it adds (KiB) |")
        print("| --- | --- | --- | --- |")
        with tempfile.TemporaryDirectory() as scratch:
            _, base = measure(copy_project(first, Path(scratch) / "base"), Path(scratch))
            for name in arguments.imports:
                variant = copy_project(first, Path(scratch) / name, name)
                built, pages = measure(variant, Path(scratch) / name)
                added = pages - base
                print(f"| import {name} | {built.size / 1e6:.2f} | {pages} | {added:+d} ({added * PAGE // 1024:+d}) |")


if __name__ == "__main__":
    main()
