from __future__ import annotations

import sys
from pathlib import Path

import pytest

# The control-plane test harness (apps, free ports, the control plane wired as `serve` wires it).
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "control"))


@pytest.fixture(scope="session")
def telemetry_module() -> tuple[Path, str]:
    """The telemetry extension built from extensions/telemetry/filter (cached by content)."""
    from meshext.extensions.telemetry.module import telemetry_module as build

    return build()
