"""The interpreter inside the module (sdk/shim/interp.c) computes what compiled code does.

The `computations` filter is built, as clang leaves its code and as wasm-opt
rewrites it (which brings `if`/`else` and `select`, instructions clang does
not emit), then carried with every function the rewriter can move
(sdk/builder/coldcode.py with an empty hot set) run by the interpreter:
CPython's float formatting and parsing, libm, big integers, hashes, struct,
json, re and Unicode tables then run as interpreted Wasm, calling back and
forth through native code, and must answer byte for byte what the compiled
module answers.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from meshext import wasm_binary as wb
from meshext.sdk.builder import build_filter, coldcode
from meshext.testing import Host

PROJECT = Path(__file__).parent / "filters" / "computations"


@pytest.fixture(scope="module", params=[False, True], ids=["clang", "wasm-opt"])
def modules(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the compiled module, the same build with everything the rewriter can move interpreted)."""
    directory = tmp_path_factory.mktemp("computations")
    compiled = build_filter(PROJECT, directory / "compiled.wasm", optimize_code=request.param).output
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(coldcode.INTERPRET_ALL_ENV, "1")
        interpreted = build_filter(PROJECT, directory / "interpreted.wasm", optimize_code=request.param).output
    # Nearly all of CPython moved: what stays compiled is the interpreter, stubs and tiny bodies.
    assert _code_size(interpreted) < _code_size(compiled) / 8, (_code_size(interpreted), _code_size(compiled))
    return compiled, interpreted


def _code_size(module: Path) -> int:
    section = wb.find_section(wb.parse_sections(module.read_bytes()), wb.CODE)
    assert section is not None
    return len(section.payload)


@pytest.mark.parametrize("probe", ["/floats", "/integers", "/library"])
def test_interpreted_code_answers_what_compiled_code_answers(modules: tuple[Path, Path], probe: str) -> None:
    answers = []
    for module in modules:
        stream = Host().load(module).exchange("GET", probe)
        assert stream.response.forwarded_headers is not None
        assert dict(stream.response.forwarded_headers)[":status"] == "200"
        answers.append(bytes(stream.response.forwarded_body))
    compiled, interpreted = answers
    assert compiled.startswith(b"[")  # the probe ran to its end
    assert interpreted == compiled
