"""The filter author's edit-test loop: `meshext test` wall time on the `meshext init` scaffold.

    python benchmarks/sdk_test_loop.py [--rounds N]

Scaffolds a project with `meshext init`, runs `meshext test` once to fill
the caches (the shim, bytecode, compiled code: a first run on a new machine
also compiles the shim, about a minute), then for each round:

- **one-line change**: edits one line of filter.py (the default header name,
  which the scaffold's test overrides, so it still passes) and times
  `meshext test`;
- **unchanged**: times `meshext test` again, and checks that it did not
  rebuild (the command says so, and the module file was not rewritten).

Each figure is the wall time of the whole command, a new process as a user
runs it.  Also prints where a one-line change's build spends its time
(BuildResult.stage_seconds), the machine, its load and the date: the
machine is shared, so compare figures taken together.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from meshext.compiled_modules import wasmtime_version
from meshext.sdk.builder import build_filter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from registry_pull import cpu_model  # noqa: E402 - the benchmarks' shared machine description

CHANGED_LINE = '    header: str = "x-path-length"'
UP_TO_DATE = "is up to date"


def meshext_test(project: Path) -> tuple[float, str]:
    """Wall seconds of `meshext test PROJECT -q`, and what it printed on stderr."""
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "meshext", "test", str(project), "-q"],
                            capture_output=True, text=True, timeout=600)
    seconds = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"meshext test failed:\n{result.stdout}\n{result.stderr}")
    return seconds, result.stderr


def edit_one_line(filter_py: Path, round_number: int) -> None:
    text = filter_py.read_text()
    current = next(line for line in text.splitlines() if line.startswith('    header: str = "x-path-length'))
    filter_py.write_text(text.replace(current, f'{CHANGED_LINE[:-1]}-{round_number}"'))


def describe(label: str, seconds: list[float]) -> str:
    return (f"| {label} | {statistics.median(seconds):.2f} s | {min(seconds):.2f} s | {max(seconds):.2f} s "
            f"| {len(seconds)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        project = Path(scratch) / "demo"
        subprocess.run([sys.executable, "-m", "meshext", "init", "demo", "-d", str(project)], check=True,
                       capture_output=True)
        filter_py = project / "filter.py"
        if CHANGED_LINE not in filter_py.read_text():
            raise SystemExit(f"the scaffold's filter.py no longer has the line {CHANGED_LINE.strip()!r}")
        meshext_test(project)  # fills the caches
        module = project / "build" / "demo.wasm"
        changed, unchanged = [], []
        for round_number in range(1, arguments.rounds + 1):
            edit_one_line(filter_py, round_number)
            seconds, said = meshext_test(project)
            if UP_TO_DATE in said:
                raise SystemExit("an edited filter was not rebuilt")
            changed.append(seconds)
            written = module.stat().st_mtime_ns
            seconds, said = meshext_test(project)
            if UP_TO_DATE not in said or module.stat().st_mtime_ns != written:
                raise SystemExit(f"an unchanged project was rebuilt:\n{said}")
            unchanged.append(seconds)
        edit_one_line(filter_py, 0)
        stages = build_filter(project).stage_seconds

    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.machine()}, {cpu_model()}, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, Python {platform.python_version()}, "
          f"wasmtime {wasmtime_version()}")
    print("| `meshext test` on the scaffold | median | min | max | rounds |")
    print("| --- | --- | --- | --- | --- |")
    print(describe("one-line change to filter.py (rebuilt)", changed))
    print(describe("unchanged project (not rebuilt: checked)", unchanged))
    print("one-line change, build stages: " + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in stages.items()))


if __name__ == "__main__":
    main()
