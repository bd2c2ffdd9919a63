"""The interpreter inside the module (sdk/shim/interp.c) computes what compiled code does.

Instruction by instruction: tests/sdk/interpreter/operations.c, linked with
the interpreter alone, runs every numeric, memory and call instruction on
corner-case operands (NaNs with payloads, -0, the bounds of each
truncation, zero divisors, addresses past memory's end), compiled and
interpreted; results and traps must be the same.

Whole programs: the `computations` filter is built as clang leaves its code
and as wasm-opt rewrites it (which brings `if`/`else` and `select`,
instructions clang does not emit), each also with every function the
rewriter can move run by the interpreter (MESHEXT_INTERPRET_ALL): CPython's
float formatting and parsing, libm, big integers, hashes, struct, json, re
and Unicode tables then run as interpreted Wasm, calling back and forth
through native code, and must answer byte for byte what the compiled module
answers.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import wasmtime
from sdk_helpers import code_size, with_passive_segments

from meshext.sdk.builder import build_filter, coldcode, toolchain
from meshext.sdk.builder.shim import SHIM_SOURCES
from meshext.testing import Host

PROJECT = Path(__file__).parent / "filters" / "computations"
OPERATIONS = Path(__file__).parent / "interpreter" / "operations.c"

# Operands (64-bit slots; i32 and f32 operations read the low half): small
# integers and addresses, sign and width bounds, and float bit patterns.
F32_PATTERNS = [0x3F800000, 0xBFC00000, 0x40200000, 0x7F800000, 0xFF800000, 0x7FC00000, 0x7FA00001, 0xFFC00001,
                0x7F7FFFFF, 0x00000001, 0x4F000000, 0xCF000000, 0xCF000001, 0x4F7FFFFF, 0x5F000000, 0x5F800000]
F64_PATTERNS = [0x3FF0000000000000, 0xBFF8000000000000, 0x4004000000000000, 0x400C000000000000, 0x7FF0000000000000,
                0xFFF0000000000000, 0x7FF8000000000000, 0x7FF4000000000001, 0x7FEFFFFFFFFFFFFF, 0x0000000000000001,
                0x41E0000000000000, 0xC1E0000000200000, 0x41EFFFFFFFE00000, 0x43E0000000000000, 0xC3E0000000000000,
                0x43F0000000000000, 0x4330000000000001]
OPERANDS = [0, 1, 2, 3, 7, 31, 32, 33, 47, 63, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0x100000005, 0x7FFFFFFFFFFFFFFF,
            0x8000000000000000, 0xFFFFFFFFFFFFFFFF, 0x123456789ABCDEF0, 0xFFFFFFF9, 0xDEADBEEF3F800000,
            *F32_PATTERNS, *F64_PATTERNS]
# The second operands, fewer (the time goes with the product).
SECOND_OPERANDS = [0, 1, 33, 0xFFFFFFFF, 0x8000000000000000, 0xFFFFFFFFFFFFFFFF, 0x123456789ABCDEF0, 0x3F800000,
                   0x7FA00001, 0x80000001, 0x3FF0000000000000, 0x7FF4000000000001, 0xFFF0000000000000]
FUEL = 10_000_000  # per operation: far more than the interpreted ones take


class Operations:
    """One module of operations.c: ``run(which, a, b)`` is the result, or "trap" (then a fresh instance)."""

    def __init__(self, module: bytes) -> None:
        config = wasmtime.Config()
        config.consume_fuel = True  # an interpreter that loops forever traps instead
        self.engine = wasmtime.Engine(config)
        self.module = wasmtime.Module(self.engine, module)
        self._instantiate()

    def _instantiate(self) -> None:
        self.store = wasmtime.Store(self.engine)
        self.store.set_fuel(FUEL)
        self.exports = wasmtime.Instance(self.store, self.module, []).exports(self.store)
        self.exports["_initialize"](self.store)

    def run(self, which: int, a: int, b: int) -> int | str:
        self.store.set_fuel(FUEL)
        try:
            return self.exports["operation"](self.store, which, _signed(a), _signed(b)) & (1 << 64) - 1
        except wasmtime.Trap:
            self._instantiate()  # as Envoy does: a trapped VM is gone
            return "trap"


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


@pytest.fixture(scope="module")
def operations(tmp_path_factory: pytest.TempPathFactory) -> tuple[Operations, Operations, int]:
    """(operations.c compiled, the same interpreted, how many operations there are)."""
    output = tmp_path_factory.mktemp("operations") / "operations.wasm"
    subprocess.run([*toolchain.zig_cc(), "-target", "wasm32-wasi", "-mexec-model=reactor", "-Oz", f"-I{SHIM_SOURCES}",
                    str(SHIM_SOURCES / "interp.c"), str(SHIM_SOURCES / "segment.c"),
                    str(OPERATIONS), "-o", str(output)], check=True)
    compiled = with_passive_segments(output.read_bytes(), b"")  # where coldcode.py appends the bodies
    carried = coldcode.carry_cold_code(compiled, hot=set())
    assert carried.functions_moved >= 2  # operation() and walk() at least
    native = Operations(compiled)
    return native, Operations(carried.module), native.exports["operation_count"](native.store)


def test_each_instruction_interpreted_gives_the_compiled_result_or_trap(
        operations: tuple[Operations, Operations, int]) -> None:
    compiled, interpreted, count = operations
    differences = []
    traps = 0
    for which in range(count + 1):  # and one past the end: the switch's default
        for a in OPERANDS:
            for b in SECOND_OPERANDS:
                expected = compiled.run(which, a, b)
                traps += expected == "trap"
                if interpreted.run(which, a, b) != expected:
                    differences.append((which, hex(a), hex(b), expected, interpreted.run(which, a, b)))
    assert differences == []
    assert 0 < traps < (count + 1) * len(OPERANDS) * len(SECOND_OPERANDS) // 2  # both ways of ending were compared


@pytest.fixture(scope="module", params=[False, True], ids=["clang", "wasm-opt"])
def modules(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the compiled module, the same build with everything the rewriter can move interpreted)."""
    directory = tmp_path_factory.mktemp("computations")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(coldcode.INTERPRET_ALL_ENV, raising=False)  # compiled even in the self-test (scripts/test.sh)
        compiled = build_filter(PROJECT, directory / "compiled.wasm", optimize_code=request.param).output
        patch.setenv(coldcode.INTERPRET_ALL_ENV, "1")
        interpreted = build_filter(PROJECT, directory / "interpreted.wasm", optimize_code=request.param).output
    # Nearly all of CPython moved: what stays compiled is the interpreter, stubs and tiny bodies.
    assert code_size(interpreted) < code_size(compiled) / 8, (code_size(interpreted), code_size(compiled))
    return compiled, interpreted



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
