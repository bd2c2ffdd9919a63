"""What every VM of a filter holds: the stdlib modules imported at build time.

The snapshot of a module holds every module imported while the filter was
imported at build time, and each Envoy VM (concurrency + 2) gets its own
copy of those pages.  So the SDK imports only what the filter uses, decided
at build time: a filter without a ``config_class`` carries no
configuration validation (dataclasses, inspect, ast...), nor json and re
unless it checks its configuration itself; a filter with one carries typing
only when its field types need it.  Imports
under ``if TYPE_CHECKING:`` are not imported at build time either.  The
filters below tell, in a request header, what their module has in
``sys.modules``; the configuration filters also show what their
configuration became, which must be what the same dataclasses give on the
host (where typing is loaded and the validation takes typing's path).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from meshext.errors import MeshextError
from meshext.sdk.builder import build_filter
from meshext.sdk.config import validate_config
from meshext.sdk.errors import ConfigError
from meshext.testing import Host

# Imported by the SDK at build time before, though this filter uses none of them.
NOT_FOR_A_FILTER_WITHOUT_CONFIG_CLASS = (
    "dataclasses", "inspect", "ast", "dis", "tokenize", "typing", "meshext.sdk.config",  # config validation
    "json", "re",  # the plugin configuration as JSON, and the build configuration
    "contextlib",  # meshext.sdk.properties
)

REPORT = '''
import sys

from meshext.sdk import HttpContext, RootContext


class Report(HttpContext):
    def on_request_headers(self, end_of_stream):
        self.request.headers.add("x-modules", " ".join(sorted(sys.modules)))
        self.request.headers.add("x-config", repr(self.root.config))
'''

NO_CONFIG_CLASS = REPORT + '''

class Root(RootContext):
    http_context = Report
'''

# No config_class, but a check of the configuration: the root expects one, as JSON.
CHECKS_CONFIG = REPORT + '''

class Root(RootContext):
    http_context = Report

    def check_config(self, config):
        pass
'''

# Field types of every kind the validation supports, written without typing.
CONFIG_TYPES = '''
from dataclasses import dataclass, field


@dataclass
class Limits:
    burst: int = 1


@dataclass
class Rule:
    prefix: str
    limits: Limits | None = None


@dataclass
class Config:
    name: str = "default"
    limits: Limits = field(default_factory=Limits)
    tags: list[str] = field(default_factory=list)
    weights: dict[str, int] = field(default_factory=dict)
    ratio: float = 1.0
    fallback: int | None = None
    rules: list[Rule] = field(default_factory=list)
    choice: str | list[str] = "a"
'''

# The same with the field types typing resolves: typing.Any and Optional, and
# a forward reference as a string inside a generic.
TYPING_CONFIG_TYPES = '''
from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class Config:
    extra: Any = None
    count: Optional[int] = None
    rules: list["Rule"] = field(default_factory=list)


@dataclass
class Rule:
    prefix: str
'''

WITH_CONFIG_CLASS = REPORT + '''

class Root(RootContext):
    http_context = Report
    config_class = Config
'''

FUTURE = "from __future__ import annotations\n"

# typing for the type checker only, and a stdlib module imported inside a
# function (which the build imports at build time: it may need the compiler).
TYPE_CHECKING_ONLY = FUTURE + """
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def wrapped(text: Any) -> str:
    import textwrap

    return textwrap.shorten(text, 20)
""" + NO_CONFIG_CLASS

CONFIGURATIONS = [
    {},
    {"name": "a", "limits": {"burst": 3}, "tags": ["x", "y"], "weights": {"a": 1}, "ratio": 2, "fallback": None,
     "rules": [{"prefix": "/api", "limits": {"burst": 2}}, {"prefix": "/"}], "choice": ["b", "c"]},
    {"limits": {"burst": "3"}},
    {"tags": "x"},
    {"tags": [1]},
    {"weights": {"a": "b"}},
    {"fallback": [1]},
    {"rules": [{"prefix": 1}]},
    {"rules": [{"limits": None}]},
    {"choice": 3},
    {"ratio": True},
    {"unknown": 1},
    [],
]
TYPING_CONFIGURATIONS = [
    {},
    {"extra": {"any": ["thing"]}, "count": 3, "rules": [{"prefix": "/"}]},
    {"count": "3"},
    {"rules": [{"prefix": None}]},
]


def build(tmp_path: Path, name: str, source: str) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "meshext.toml").write_text(f'[filter]\nname = "{name}"\nentry = "filter:Root"\n')
    (folder / "filter.py").write_text(source)
    return build_filter(folder, tmp_path / f"{name}.wasm").output


def modules_in(plugin: Any) -> set[str]:
    return set(plugin.exchange("GET", "/").request.header("x-modules").split())


def in_the_module(module: Path, configuration: Any) -> str:
    """What the module makes of ``configuration``: the repr of its config, or the refusal it logs."""
    host = Host()
    try:
        plugin = host.load(module, config=json.dumps(configuration))
    except MeshextError:
        (refusal,) = [line for line in host.log_lines() if "plugin configuration refused" in line]
        return refusal.removeprefix("plugin configuration refused: ")
    return plugin.exchange("GET", "/").request.header("x-config")


def on_the_host(tmp_path: Path, name: str, source: str, configuration: Any) -> str:
    """What validate_config makes of ``configuration`` with the same dataclasses, imported on the host."""
    path = tmp_path / f"{name}_on_host.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # string annotations are resolved in the module's namespace
    try:
        spec.loader.exec_module(module)
        return repr(validate_config(module.Config, configuration))
    except ConfigError as error:
        return str(error)
    finally:
        del sys.modules[path.stem]


def test_a_filter_without_config_class_carries_no_config_validation_json_or_re(tmp_path: Path) -> None:
    module = build(tmp_path, "no-config-class", NO_CONFIG_CLASS)
    plugin = Host().load(module)
    assert modules_in(plugin) & set(NOT_FOR_A_FILTER_WITHOUT_CONFIG_CLASS) == set()
    # A JSON configuration still comes as a dict: json is imported when it comes, in that VM only.
    configured = Host().load(module, config={"greeting": "hé"})
    stream = configured.exchange("GET", "/")
    assert stream.request.header("x-config") == repr({"greeting": "hé"})
    assert "json" in stream.request.header("x-modules").split()


def test_a_root_that_checks_its_configuration_has_json_from_the_build(tmp_path: Path) -> None:
    modules = modules_in(Host().load(build(tmp_path, "checks-config", CHECKS_CONFIG)))
    assert "json" in modules
    assert modules & {"dataclasses", "inspect", "typing", "meshext.sdk.config"} == set()


def test_imports_for_type_checkers_only_are_not_imported_at_build_time(tmp_path: Path) -> None:
    modules = modules_in(Host().load(build(tmp_path, "type-checking", TYPE_CHECKING_ONLY)))
    assert "typing" not in modules
    assert "textwrap" in modules


@pytest.mark.parametrize("future", [False, True], ids=["annotations", "string-annotations"])
def test_a_config_class_without_typing_is_validated_without_typing_as_on_the_host(
        tmp_path: Path, future: bool) -> None:
    source = (FUTURE if future else "") + CONFIG_TYPES + WITH_CONFIG_CLASS
    module = build(tmp_path, "config-class", source)
    assert "typing" not in modules_in(Host().load(module))
    for configuration in CONFIGURATIONS:
        assert in_the_module(module, configuration) == on_the_host(tmp_path, "plain", source, configuration), \
            configuration


def test_field_types_that_need_typing_are_resolved_with_it(tmp_path: Path) -> None:
    source = TYPING_CONFIG_TYPES + WITH_CONFIG_CLASS
    module = build(tmp_path, "typing-config", source)
    for configuration in TYPING_CONFIGURATIONS:
        assert in_the_module(module, configuration) == on_the_host(tmp_path, "typed", source, configuration), \
            configuration
    # A string inside a generic, without typing imported by the filter: typing resolves it at build time.
    forward = CONFIG_TYPES.replace("rules: list[Rule]", 'rules: list["Rule"]') + WITH_CONFIG_CLASS
    module = build(tmp_path, "forward-reference", forward)
    assert "typing" in modules_in(Host().load(module))
    configuration = {"rules": [{"prefix": 1}]}
    assert in_the_module(module, configuration) == on_the_host(tmp_path, "forward", forward, configuration)
