"""Every project under examples/ builds and passes its own tests, run the way
its README says (`meshext test examples/NAME`).  Examples are discovered: a
new folder is covered without touching this file."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(path for path in (REPOSITORY / "examples").iterdir()
                  if path.is_dir() and not path.name.startswith((".", "_")))
# pytest's last line, e.g. "16 passed, 2 xfailed in 0.38s".
SUMMARY = re.compile(r"^(?P<counts>\d+ \w+(, \d+ \w+)*) in [\d.]+s")


def test_the_examples_are_found() -> None:
    names = {path.name for path in EXAMPLES}
    assert {"header-policy", "auth-callout", "json-transform", "request-metrics", "tcp-byte-count",
            "grpc-call"} <= names


@pytest.mark.slow
@pytest.mark.parametrize("example", EXAMPLES, ids=[path.name for path in EXAMPLES])
def test_the_example_builds_and_its_tests_pass(example: Path) -> None:
    assert (example / "meshext.toml").is_file(), f"{example} is not a filter project: add its meshext.toml"
    assert (example / "README.md").is_file(), f"{example} has no README.md"
    result = subprocess.run(
        [sys.executable, "-m", "meshext", "test", f"examples/{example.name}", "-q", "-p", "no:cacheprovider"],
        cwd=REPOSITORY, capture_output=True, text=True, timeout=600,
    )
    output = f"--- stdout\n{result.stdout[-6000:]}\n--- stderr\n{result.stderr[-3000:]}"
    assert result.returncode == 0, output
    summary = SUMMARY.match(result.stdout.strip().splitlines()[-1]) if result.stdout.strip() else None
    assert summary is not None, output
    counts = {}
    for item in summary["counts"].split(", "):
        number, outcome = item.split(" ", 1)
        counts[outcome] = int(number)
    assert counts.get("passed", 0) > 0, output
    assert not {"failed", "error", "errors", "xpassed"} & set(counts), output
