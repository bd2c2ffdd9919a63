"""pytest plugin (entry point ``meshext``): fixtures for testing Proxy-Wasm filters.

Fixtures:

- ``filter_module``: ``filter_module(config=..., **options)`` loads the module
  under test into ``proxy_host`` and returns the started plugin (also a
  context manager that drains it on exit).  ``config`` may be a dict (sent
  as JSON), a string or bytes; options are those of ``Host.load``.
- ``filter_module_path``: path of the module under test, from
  ``--meshext-module`` or ``$MESHEXT_TEST_MODULE`` (``meshext test`` sets it).
  ``$MESHEXT_TEST_ROOT_ID`` is the ``root_id`` every ``Host.load`` uses
  unless a test names one (``meshext build --cold-code`` runs each
  project's tests against the multi-root module it built; a module of one
  project serves every ``root_id``).
- ``proxy_host``: a fresh ``Host`` (one simulated Envoy) per test; load more
  VMs into it to test shared data, queues and ticks.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from meshext.errors import MeshextError

if TYPE_CHECKING:
    # pytest loads this plugin in every run of an environment that has meshext
    # installed; the test host (and wasmtime behind it) loads only when a test
    # asks for one of the fixtures.
    from meshext.runtime._host import Host
    from meshext.runtime._plugin import PluginVM

MODULE_ENV = "MESHEXT_TEST_MODULE"


def pytest_addoption(parser: pytest.Parser) -> None:
    """The ``--meshext-module FILE.wasm`` option."""
    group = parser.getgroup("meshext", "meshext Proxy-Wasm filter testing")
    group.addoption("--meshext-module", default=None, metavar="FILE.wasm",
                    help=f"Proxy-Wasm module the filter_module fixture loads (default: ${MODULE_ENV})")


@pytest.fixture
def proxy_host() -> Host:
    """A fresh test host (one simulated Envoy) for this test."""
    from meshext.runtime._host import Host

    return Host()


@pytest.fixture
def filter_module_path(request: pytest.FixtureRequest) -> Path:
    """The module under test: ``--meshext-module`` or ``$MESHEXT_TEST_MODULE``."""
    value = request.config.getoption("--meshext-module") or os.environ.get(MODULE_ENV)
    if not value:
        raise MeshextError("no module under test", where="filter_module fixture",
                           fix=f"run `meshext test DIR`, or pass --meshext-module FILE.wasm, or set {MODULE_ENV}")
    path = Path(value)
    if not path.is_file():
        raise MeshextError(f"module {path} does not exist", where="filter_module fixture",
                           fix="build the filter first (meshext build) or fix the path")
    return path


@pytest.fixture
def filter_module(proxy_host: Host, filter_module_path: Path) -> Callable[..., PluginVM]:
    """``filter_module(config=..., **options)`` loads the module under test into ``proxy_host``."""
    def load(config: Any = b"", **options: Any) -> PluginVM:
        return proxy_host.load(filter_module_path, config=config, **options)

    return load


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    """A failing test shows what the module logged (an SDK filter's Python traceback lands there)."""
    report = yield
    host = getattr(item, "funcargs", {}).get("proxy_host")
    if report.failed and host is not None and host.logs:
        lines = [f"{record.level.name.lower():8} ctx {record.context_id}: {record.message}"
                 for record in host.logs[-50:]]
        report.sections.append(("meshext module log (last 50 lines)", "\n".join(lines)))
    return report
