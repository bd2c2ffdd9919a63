"""Fixtures for the SDK tests: filters built once per session by `meshext build`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sdk_helpers import EchoServer

from meshext.sdk.builder import BuildResult, build_filter

FILTERS = Path(__file__).parent / "filters"


@pytest.fixture(scope="session")
def built_filter(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], BuildResult]:
    """Builds tests/sdk/filters/NAME (once per session) and returns the result."""
    cache: dict[str, BuildResult] = {}
    output_dir = tmp_path_factory.mktemp("modules")

    def build(name: str) -> BuildResult:
        if name not in cache:
            cache[name] = build_filter(FILTERS / name, output_dir / f"{name}.wasm")
        return cache[name]

    return build


@pytest.fixture(scope="session")
def echo_server() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()
