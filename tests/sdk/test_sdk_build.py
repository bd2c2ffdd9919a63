"""`meshext init` and `meshext build` as a user runs them, good input and bad."""

from __future__ import annotations

import base64
import hashlib
import importlib.machinery
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from meshext.errors import MeshextError
from meshext.sdk.builder import analysis, build_filter, toolchain
from meshext.testing import Host


def meshext(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "meshext", *args], cwd=cwd, capture_output=True, text=True, env=env)


def test_scaffold_builds_into_a_valid_module(tmp_path: Path) -> None:
    created = meshext("init", "hello-filter", cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    built = meshext("build", "hello-filter", "-o", "hello.wasm", cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    assert "size" in built.stdout and "imports" in built.stdout and "build time" in built.stdout
    module = tmp_path / "hello.wasm"
    subprocess.run([toolchain.wasm_tools(), "validate", str(module)], check=True)
    assert module.read_bytes()[:4] == b"\0asm"


def test_a_machine_without_node_js_is_told_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no node, no npm
    with pytest.raises(MeshextError) as refused:
        toolchain.wasm_opt()
    assert "Node.js is not installed" in refused.value.message
    assert refused.value.fix is not None and "apt-get install nodejs npm" in refused.value.fix


def scaffold(tmp_path: Path, filter_source: str, toml_extra: str = "") -> Path:
    project = tmp_path / "broken"
    project.mkdir()
    (project / "meshext.toml").write_text(f'[filter]\nname = "broken"\nentry = "filter:Root"\n{toml_extra}')
    (project / "filter.py").write_text(filter_source)
    return project


GOOD_ROOT = "from meshext.sdk import RootContext\nclass Root(RootContext):\n    pass\n"


@pytest.mark.parametrize(
    ("source", "expected_where", "expected_message"),
    [
        ("from meshext.sdk import RootContext\nclass Root(RootContext)\n    pass\n", "filter.py:2", "syntax error"),
        ("from meshext.sdk import RootContext\nclass Other(RootContext):\n    pass\n", "filter.py:1",
         "no class 'Root'"),
        ("import socket\n" + GOOD_ROOT, "filter.py:1", "not available inside a proxy"),
        ("import pyexpat\n" + GOOD_ROOT, "filter.py:1", "C module that meshext does not link"),
        ("from email import message\n" + GOOD_ROOT, "filter.py:1",
         "import of 'email.message', which imports 'socket' (email.message -> email.utils -> socket): not available "
         "inside a proxy"),
        ("import yaml\n" + GOOD_ROOT, "filter.py:1", "no such module"),
        ("def handler():\n    import sqlite3\n" + GOOD_ROOT, "filter.py:2", "not available inside a proxy"),
        ("from meshext.sdk import RootContext\nclass Root(RootContext):\n    pass\nraise RuntimeError('at import')\n",
         "filter.py:4", "RuntimeError: at import"),
        ("Root = 42\n", "", "not a RootContext subclass"),
        ("from meshext.sdk import Action, HttpContext, RootContext\nclass Check(HttpContext):\n"
         "    def on_request_headers(self):\n        return Action.CONTINUE\n"
         "class Root(RootContext):\n    http_context = Check\n",
         "filter.py:3", "on_request_headers(self) does not take the SDK's arguments"),
        ("import meshext.sdk as sdk\nclass Root(sdk.RootContext):\n    def on_configure(self, config, schema):\n"
         "        return True\n", "filter.py:3",
         "on_configure(self, config, schema) does not take the SDK's arguments"),
        ("from meshext.sdk import HttpContext, RootContext\nclass Check(HttpContext):\n"
         "    def on_request_body(self, body_size, *, end_of_stream):\n        pass\n"
         "class Root(RootContext):\n    http_context = Check\n",
         "filter.py:3", "the SDK calls Check.on_request_body with (body_size, end_of_stream)"),
        ("from meshext.sdk import HttpContext, RootContext\nclass Check(HttpContext):\n"
         "    async def on_request_headers(self, end_of_stream):\n        pass\n"
         "class Root(RootContext):\n    http_context = Check\n",
         "filter.py:3", "Check.on_request_headers is `async def`"),
    ],
    ids=["syntax", "missing-class", "socket", "unlinked-c-module", "socket-through-the-stdlib", "unknown-module",
         "nested-import",
         "raises-at-import", "not-a-root-context", "callback-without-arguments", "callback-extra-argument",
         "callback-keyword-only-argument", "async-callback"],
)
def test_bad_filter_code_names_the_file_and_line(tmp_path: Path, source: str, expected_where: str,
                                                 expected_message: str) -> None:
    project = scaffold(tmp_path, source)
    result = meshext("build", str(project), "-o", str(tmp_path / "out.wasm"), cwd=tmp_path)
    assert result.returncode == 1
    assert expected_message in result.stderr
    assert expected_where in result.stderr
    assert "fix:" in result.stderr
    assert "Traceback (most recent call last):\n  File \"/work" not in result.stderr  # no meshext internals
    assert not (tmp_path / "out.wasm").exists()


def test_a_callback_override_the_sdk_cannot_call_fails_the_build_with_the_sdk_signature(tmp_path: Path) -> None:
    # The override sits in another module of the project, on a class derived
    # from the project's own base class; the SDK calls it positionally.
    project = scaffold(tmp_path, "from meshext.sdk import RootContext\nfrom common import Audited\n\n\n"
                                 "class Check(Audited):\n    def on_response_headers(self, end_of_stream, status):\n"
                                 "        pass\n\n\nclass Root(RootContext):\n    http_context = Check\n")
    (project / "common.py").write_text("from meshext.sdk import contexts\n\n\nclass Audited(contexts.HttpContext):\n"
                                       "    pass\n")
    started = time.monotonic()
    result = meshext("build", str(project), "-o", str(tmp_path / "out.wasm"), cwd=tmp_path)
    assert result.returncode == 1
    assert (f"{project / 'filter.py'}:6: on_response_headers(self, end_of_stream, status) does not take the SDK's "
            "arguments") in result.stderr
    assert "fix: def on_response_headers(self, end_of_stream: bool) -> Action | None" in result.stderr
    assert time.monotonic() - started < 10  # before any compiling: the shim and the interpreter never start


def test_callback_overrides_the_sdk_can_call_pass(tmp_path: Path) -> None:
    # Other parameter names, defaults, *args, extra keyword-only parameters
    # with defaults, decorated methods and methods that are not callbacks.
    project = scaffold(tmp_path, """
import functools
from meshext.sdk import Action, GrpcStreamHandler, HttpContext, RootContext, StreamContext

class Check(HttpContext):
    def on_request_headers(self, eos):
        return Action.CONTINUE
    def on_request_body(self, *sizes_and_end):
        return Action.CONTINUE
    def on_response_headers(self, end_of_stream, extra=None, *, verbose=False):
        return Action.CONTINUE
    @functools.lru_cache
    def on_log(self, anything):
        pass
    def on_auth_answer(self, response, more):
        pass

class Tcp(StreamContext):
    def on_downstream_close(self, peer, /):
        pass

class Handler(GrpcStreamHandler):
    def on_close(self, status_code, status_message):
        pass

class Root(RootContext):
    http_context = Check
    def new_http_context(self, context_id):
        return Check(self, context_id)
""")
    sources = analysis.project_sources(project)
    analysis.check_callback_signatures(analysis.check_syntax(sources))


@pytest.mark.parametrize(
    ("toml_extra", "field"),
    [('phase = "Sometime"\n', "phase"), ('fail_policy = "maybe"\n', "fail_policy"), ("priority = 'high'\n", "priority"),
     ('dependencies = ["humanize>=4"]\n', "dependencies")],
)
def test_bad_project_settings_name_the_field(tmp_path: Path, toml_extra: str, field: str) -> None:
    project = scaffold(tmp_path, GOOD_ROOT, toml_extra)
    result = meshext("build", str(project), cwd=tmp_path)
    assert result.returncode == 1
    assert f"[filter] {field}" in result.stderr and "fix:" in result.stderr


def test_missing_project_file_explains_how_to_start(tmp_path: Path) -> None:
    result = meshext("build", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 1
    assert "meshext init" in result.stderr


# ---- dependencies declared in meshext.toml ----

def write_wheel(folder: Path, name: str, version: str, files: dict[str, bytes]) -> Path:
    """A wheel of a tiny distribution, so that pip installs it without an index or a build backend."""
    dist_info = f"{name}-{version}.dist-info"
    contents = dict(files) | {
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: meshext-tests\nRoot-Is-Purelib: true\n"
                              b"Tag: py3-none-any\n",
    }
    record = [f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
              f"{len(data)}" for path, data in contents.items()]
    contents[f"{dist_info}/RECORD"] = "\n".join([*record, f"{dist_info}/RECORD,,", ""]).encode()
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in contents.items():
            archive.writestr(path, data)
    return wheel


EXTENSION = importlib.machinery.EXTENSION_SUFFIXES[0]  # e.g. .cpython-311-x86_64-linux-gnu.so
DISTRIBUTIONS = {
    ("tinyfmt", "1.2.3"): {
        "tinyfmt/__init__.py": b'import os\n\n'
                               b'with open(os.path.join(os.path.dirname(__file__), "greeting.txt")) as f:\n'
                               b'    GREETING = f.read().strip()\n\n\ndef shout(text):\n    return text.upper() + "!"\n'
                               b'\n\ndef explode(reason):\n    raise ValueError(f"tinyfmt cannot format {reason}")\n',
        "tinyfmt/greeting.txt": b"hello from a data file\n",
        # Its test suite imports what a proxy lacks; nothing the filter runs imports it.
        "tinyfmt/tests/test_net.py": b"import socket\nimport pytest\n",
    },
    # A C speed-up that the package does without.
    ("fastfmt", "0.9"): {
        "fastfmt/__init__.py": b"try:\n    from fastfmt._speedups import pad\nexcept ImportError:\n"
                               b"    def pad(text):\n        return f'[{text}]'\n",
        f"fastfmt/_speedups{EXTENSION}": b"\x7fELF not really",
    },
    ("netfetch", "0.1"): {"netfetch/__init__.py": b'"""Fetches things."""\nimport socket\n'},
    ("netlog", "0.2"): {"netlog/__init__.py": b"from netlog.ship import Shipper\n",
                        "netlog/ship.py": b"import json\nimport logging.handlers\n"},
    ("fastjson", "2.0"): {"fastjson/__init__.py": b"from fastjson._core import loads\n",
                          f"fastjson/_core{EXTENSION}": b"\x7fELF not really"},
    # The host's parser takes it; the module's CPython refuses to compile it.
    ("badcode", "1.0"): {"badcode/__init__.py": b"VALUE = 1\nreturn VALUE\n"},
}


@pytest.fixture(scope="module")
def site_packages(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder where pip installed the test distributions, as a user's environment would hold them."""
    folder = tmp_path_factory.mktemp("dists")
    wheels = [write_wheel(folder, name, version, files) for (name, version), files in DISTRIBUTIONS.items()]
    target = folder / "site-packages"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--target",
                    str(target), *map(str, wheels)], check=True, capture_output=True)
    return target


def with_packages(site_packages: Path) -> dict[str, str]:
    """The environment of a build whose Python has the test distributions installed."""
    paths = [os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []
    return {**os.environ, "PYTHONPATH": os.pathsep.join([*paths, str(site_packages)])}


DEPENDENT_FILTER = '''
import fastfmt
import tinyfmt
from helpers import tenant
from meshext.sdk import Action, HttpContext, RootContext


class Format(HttpContext):
    def on_request_headers(self, end_of_stream):
        path = self.request.headers.get(":path")
        if path == "/boom":
            tinyfmt.explode("this")
        if path == "/tenant":
            tenant.check(path)
        self.request.headers.add("x-shout", tinyfmt.shout("hello"))
        self.request.headers.add("x-greeting", tinyfmt.GREETING)
        self.request.headers.add("x-padded", fastfmt.pad("x"))
        return Action.CONTINUE


class Root(RootContext):
    http_context = Format
'''


def test_declared_dependencies_are_bundled_and_tracebacks_name_real_paths(tmp_path: Path,
                                                                         site_packages: Path) -> None:
    project = tmp_path / "my-filter"
    (project / "helpers").mkdir(parents=True)
    (project / "meshext.toml").write_text('[filter]\nname = "my-filter"\nentry = "filter:Root"\n'
                                          'dependencies = ["tinyfmt", "fastfmt"]\n')
    (project / "filter.py").write_text(DEPENDENT_FILTER)
    (project / "helpers" / "__init__.py").write_text("")
    (project / "helpers" / "tenant.py").write_text("def check(path):\n    raise KeyError(f'no tenant in {path}')\n")
    built = meshext("build", "my-filter", "-o", "out.wasm", cwd=tmp_path, env=with_packages(site_packages))
    assert built.returncode == 0, built.stderr

    plugin = Host().load(tmp_path / "out.wasm")
    request = plugin.exchange("GET", "/").request
    assert (request.header("x-shout"), request.header("x-greeting"), request.header("x-padded")) == (
        "HELLO!", "hello from a data file", "[x]")
    plugin.exchange("GET", "/boom")
    plugin.exchange("GET", "/tenant")
    log = "\n".join(plugin.log_messages())
    # The project's files under the project folder's name, a dependency's
    # under site-packages, with their source lines.
    assert 'File "my-filter/filter.py", line 12, in on_request_headers\n    tinyfmt.explode("this")' in log
    assert ('File "site-packages/tinyfmt/__init__.py", line 12, in explode\n'
            '    raise ValueError(f"tinyfmt cannot format {reason}")') in log
    assert "ValueError: tinyfmt cannot format this" in log
    assert ('File "my-filter/helpers/tenant.py", line 2, in check\n'
            "    raise KeyError(f'no tenant in {path}')") in log


VERSION_FILTER = """from packaging.version import Version
from meshext.sdk import Action, HttpContext, RootContext


class Newer(HttpContext):
    def on_request_headers(self, end_of_stream):
        newer = Version(self.request.headers.get("x-version", "0")) > Version("1.2")
        self.request.headers.add("x-newer", str(newer))
        return Action.CONTINUE


class Root(RootContext):
    http_context = Newer
"""


def test_a_real_distribution_from_pypi_is_bundled(tmp_path: Path) -> None:
    # packaging (a pytest dependency, so installed wherever these tests run)
    # imports typing_extensions under `if typing.TYPE_CHECKING:`, which never
    # runs in the module: the build once refused it as a missing module.
    project = scaffold(tmp_path, VERSION_FILTER, 'dependencies = ["packaging"]\n')
    built = meshext("build", str(project), "-o", str(tmp_path / "out.wasm"), cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    plugin = Host().load(tmp_path / "out.wasm")
    newer = [plugin.exchange("GET", "/", headers={"x-version": version}).request.header("x-newer")
             for version in ("1.10", "1.1")]
    assert newer == ["True", "False"]
    plugin.exchange("GET", "/", headers={"x-version": "not a version"})
    log = "\n".join(plugin.log_messages())
    assert 'File "broken/filter.py", line 7, in on_request_headers' in log
    assert 'File "site-packages/packaging/version.py"' in log
    assert "packaging.version.InvalidVersion: Invalid version: 'not a version'" in log


@pytest.mark.parametrize(
    ("dependency", "expected_where", "expected_message"),
    [
        ("netfetch", "netfetch/__init__.py:2",
         "dependency netfetch 0.1: module 'netfetch' imports 'socket': not available inside a proxy"),
        ("netlog", "netlog/ship.py:2",
         "dependency netlog 0.2: module 'netlog.ship' imports 'logging.handlers', which imports 'socket' "
         "(logging.handlers -> socket): not available inside a proxy"),
        ("fastjson", "fastjson/__init__.py:1",
         f"dependency fastjson 2.0: module 'fastjson' imports 'fastjson._core', a C extension of dependency "
         f"fastjson 2.0 (fastjson/_core{EXTENSION}): Proxy-Wasm modules carry pure Python only"),
        ("not-installed", "meshext.toml",
         "dependency 'not-installed' is not installed in the Python environment that runs meshext build"),
        ("badcode", "badcode/__init__.py:2",
         "syntax error (in dependency badcode 1.0): 'return' outside function (the module runs CPython 3.11)"),
    ],
    ids=["needs-sockets", "needs-sockets-through-the-stdlib", "needs-its-c-extension", "not-installed",
         "refused-by-the-modules-cpython"],
)
def test_dependencies_that_cannot_run_in_a_proxy_are_refused(tmp_path: Path, site_packages: Path, dependency: str,
                                                             expected_where: str, expected_message: str) -> None:
    top = dependency.replace("-", "_")
    project = scaffold(tmp_path, f"import {top}\n" + GOOD_ROOT, f'dependencies = ["{dependency}"]\n')
    result = meshext("build", str(project), "-o", str(tmp_path / "out.wasm"), cwd=tmp_path,
                     env=with_packages(site_packages))
    assert result.returncode == 1
    assert expected_message in result.stderr
    assert expected_where in result.stderr and "fix:" in result.stderr
    assert not (tmp_path / "out.wasm").exists()


def test_an_installed_package_the_project_does_not_declare_names_the_fix(tmp_path: Path,
                                                                         site_packages: Path) -> None:
    project = scaffold(tmp_path, "import tinyfmt\n" + GOOD_ROOT)
    result = meshext("build", str(project), cwd=tmp_path, env=with_packages(site_packages))
    assert result.returncode == 1
    assert f"{project / 'filter.py'}:1: import of 'tinyfmt': no such module" in result.stderr
    assert "fix: add 'tinyfmt' to [filter] dependencies in meshext.toml" in result.stderr


def test_an_edited_dependency_is_rebuilt_with_what_it_now_imports(tmp_path: Path, site_packages: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # The installed files are part of the build's key, and of the stdlib
    # closure's: the edit imports a stdlib module the module did not carry.
    installed = tmp_path / "site-packages"
    shutil.copytree(site_packages, installed)
    monkeypatch.syspath_prepend(str(installed))
    project = scaffold(tmp_path, "import tinyfmt\nfrom meshext.sdk import Action, HttpContext, RootContext\n"
                                 "class Shout(HttpContext):\n    def on_request_headers(self, end_of_stream):\n"
                                 "        self.request.headers.add('x-shout', tinyfmt.shout('hi'))\n"
                                 "        return Action.CONTINUE\n"
                                 "class Root(RootContext):\n    http_context = Shout\n",
                       'dependencies = ["tinyfmt"]\n')
    first = build_filter(project)
    assert build_filter(project).rebuilt is False
    assert Host().load(first.output).exchange("GET", "/").request.header("x-shout") == "HI!"

    code = installed / "tinyfmt" / "__init__.py"
    code.write_text(code.read_text().replace('return text.upper() + "!"',
                                             'from fractions import Fraction\n    return f"{text} {Fraction(2, 4)}"'))
    edited = build_filter(project)
    assert edited.rebuilt and edited.stdlib_modules > first.stdlib_modules
    assert Host().load(edited.output).exchange("GET", "/").request.header("x-shout") == "hi 1/2"
