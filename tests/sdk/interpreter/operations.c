/*
 * Wasm instructions one by one, for tests/sdk/test_sdk_interpreter.py.
 *
 * Linked with sdk/shim/interp.c and segment.c into a small module; the test moves `operation`
 * and its helpers to the interpreter (sdk/builder/coldcode.py) and compares
 * each case's result, or its trap, with the compiled module's.  Values travel
 * as bit patterns (floats too), so NaN payloads and -0 compare exactly.
 * The cases are written so that clang emits the one instruction their comment
 * or expression names.
 */
#include <stdint.h>
#include <string.h>

static float f32(uint64_t bits) { uint32_t b = (uint32_t)bits; float f; memcpy(&f, &b, 4); return f; }
static double f64(uint64_t bits) { double d; memcpy(&d, &bits, 8); return d; }
static uint64_t b32(float f) { uint32_t b; memcpy(&b, &f, 4); return b; }
static uint64_t b64(double d) { uint64_t b; memcpy(&b, &d, 8); return b; }

static uint8_t scratch[64];
/* What scratch holds when each operation starts. */
static const uint8_t pattern[64] = { /* bytes with the top bit set and clear */
    0x91, 0xDA, 0x23, 0x6C, 0xB5, 0xFE, 0x47, 0x90, 0xD9, 0x22, 0x6B, 0xB4, 0xFD, 0x46, 0x8F, 0xD8,
    0x21, 0x6A, 0xB3, 0xFC, 0x45, 0x8E, 0xD7, 0x20, 0x69, 0xB2, 0xFB, 0x44, 0x8D, 0xD6, 0x1F, 0x68,
    0xB1, 0xFA, 0x43, 0x8C, 0xD5, 0x1E, 0x67, 0xB0, 0xF9, 0x42, 0x8B, 0xD4, 0x1D, 0x66, 0xAF, 0xF8,
    0x41, 0x8A, 0xD3, 0x1C, 0x65, 0xAE, 0xF7, 0x40, 0x89, 0xD2, 0x1B, 0x64, 0xAD, 0xF6, 0x3F, 0x88,
};

/* In-bounds addresses below 48 land in `scratch`; larger ones are used as they are. */
static uintptr_t address(uint32_t x) { return x < 48 ? (uintptr_t)scratch + x : x; }

static uint64_t checksum(void) {
    uint64_t sum = 0;
    for (int i = 0; i < 64; i++) sum = sum * 31 + scratch[i];
    return sum;
}

__attribute__((noinline)) static uint64_t twice(uint64_t a) { return a * 2 + (a >> 60); }
__attribute__((noinline)) static uint64_t thrice(uint64_t a) { return a * 3 ^ (a << 7); }
__attribute__((noinline)) static uint32_t other_signature(uint32_t a, uint32_t b) { return a - b; }
typedef uint64_t (*unary_function)(uint64_t);
static unary_function functions[] = {twice, thrice, (unary_function)other_signature};

/* Recursion through the interpreter, with a frame on the C stack (__stack_pointer). */
__attribute__((noinline)) static uint64_t walk(uint32_t depth, uint64_t seed) {
    volatile uint64_t frame[8];
    for (int i = 0; i < 8; i++) frame[i] = seed * (uint64_t)(i + 1) + depth;
    if (depth == 0) return frame[7];
    uint64_t sum = 0;
    for (int i = 0; i < 8; i++) sum ^= frame[i] << i;
    return sum + walk(depth - 1, sum) * 3;
}

__attribute__((target("bulk-memory")))
static void fill(uintptr_t destination, uint32_t value, uint32_t size) {
    __asm__ volatile("local.get %0\n\tlocal.get %1\n\tlocal.get %2\n\tmemory.fill 0"
                     :: "r"(destination), "r"(value), "r"(size) : "memory");
}

__attribute__((target("bulk-memory")))
static void copy(uintptr_t destination, uintptr_t source, uint32_t size) {
    __asm__ volatile("local.get %0\n\tlocal.get %1\n\tlocal.get %2\n\tmemory.copy 0, 0"
                     :: "r"(destination), "r"(source), "r"(size) : "memory");
}

/* Blocks, loops and ifs with type-index block types (params), which clang's
 * own code never has (wasm-opt's may), and an if without else. */
__attribute__((target("multivalue")))
static uint64_t structured(uint32_t c, uint64_t a) {
    uint64_t r;
    uint32_t n;
    uint64_t m;
    __asm__ volatile(
        "local.get %3\n\t"
        "local.get %4\n\t"
        "i32.const 7\n\t"
        "i32.and\n\t"
        "block (i64, i32) -> (i64)\n\t"
        "loop (i64, i32) -> (i64)\n\t"
        "local.set %1\n\t"
        "local.get %1\n\t"
        "i32.eqz\n\t"
        "br_if 1\n\t"
        "i64.const 3\n\t"
        "i64.mul\n\t"
        "local.get %1\n\t"
        "i32.const 1\n\t"
        "i32.sub\n\t"
        "br 0\n\t"
        "end_loop\n\t"
        "end_block\n\t"
        "local.get %4\n\t"
        "i32.const 1\n\t"
        "i32.and\n\t"
        "if (i64) -> (i64)\n\t"
        "i64.const 1\n\t"
        "i64.add\n\t"
        "else\n\t"
        "i64.const 7\n\t"
        "i64.mul\n\t"
        "end_if\n\t"
        "local.get %4\n\t"
        "i32.const 2\n\t"
        "i32.and\n\t"
        "if (i64) -> (i64)\n\t"
        "i64.const 5\n\t"
        "i64.xor\n\t"
        "end_if\n\t"
        "block (i64) -> (i64)\n\t"
        "block (i64) -> (i64)\n\t"
        "local.get %4\n\t"
        "i32.const 4\n\t"
        "i32.shr_u\n\t"
        "br_table {0, 1, 1}\n\t"
        "end_block\n\t"
        "i64.const 100\n\t"
        "i64.add\n\t"
        "end_block\n\t"
        "i64.const 0\n\t"
        "local.set %2\n\t"
        "local.get %4\n\t"
        "i32.const 64\n\t"
        "i32.and\n\t"
        "if\n\t"
        "nop\n\t"
        "i64.const 9\n\t"
        "local.set %2\n\t"
        "end_if\n\t"
        "local.get %2\n\t"
        "i64.sub\n\t"
        "local.set %0"
        : "=r"(r), "=r"(n), "=r"(m) : "r"(a), "r"(c));
    return r;
}
/* One instruction clang would otherwise fold into others (i32.or into i64.or, abs and neg into bit masks). */
#define UNARY(type, instruction, operand) ({                                                   \
    type result_;                                                                              \
    __asm__ volatile("local.get %1\n\t" instruction "\n\tlocal.set %0" : "=r"(result_) : "r"(operand)); \
    result_; })
#define BINARY(type, instruction, first, second) ({                                            \
    type result_;                                                                              \
    __asm__ volatile("local.get %1\n\tlocal.get %2\n\t" instruction "\n\tlocal.set %0"           \
                     : "=r"(result_) : "r"(first), "r"(second));                               \
    result_; })

#define CASE(expression) case __COUNTER__: return (uint64_t)(expression);

/* One load or store instruction (with its offset immediate) at `at`. */
#define LOAD(type, instruction, at) ({                                                         \
    type loaded_;                                                                              \
    __asm__ volatile("local.get %1\n\t" instruction "\n\tlocal.set %0" : "=r"(loaded_) : "r"(at) : "memory"); \
    loaded_; })
#define STORE(instruction, at, value) ({                                                      \
    __asm__ volatile("local.get %0\n\tlocal.get %1\n\t" instruction :: "r"(at), "r"(value) : "memory"); })
#define LOADS_i32(offset)                                                                        \
    CASE(LOAD(uint32_t, "i32.load " #offset, address(x))) CASE(LOAD(uint32_t, "i32.load8_s " #offset, address(x))) \
    CASE(LOAD(uint32_t, "i32.load8_u " #offset, address(x))) CASE(LOAD(uint32_t, "i32.load16_s " #offset, address(x))) \
    CASE(LOAD(uint32_t, "i32.load16_u " #offset, address(x)))
#define LOADS_i64(offset)                                                                        \
    CASE(LOAD(uint64_t, "i64.load " #offset, address(x))) CASE(LOAD(uint64_t, "i64.load8_s " #offset, address(x))) \
    CASE(LOAD(uint64_t, "i64.load8_u " #offset, address(x))) CASE(LOAD(uint64_t, "i64.load16_s " #offset, address(x))) \
    CASE(LOAD(uint64_t, "i64.load16_u " #offset, address(x))) CASE(LOAD(uint64_t, "i64.load32_s " #offset, address(x))) \
    CASE(LOAD(uint64_t, "i64.load32_u " #offset, address(x)))
#define LOADS(kind, type, offset) LOADS_##kind(offset)

__attribute__((export_name("operation"), target("nontrapping-fptoint,bulk-memory,multivalue")))
uint64_t operation(uint32_t which, uint64_t a, uint64_t b) {
    uint32_t x = (uint32_t)a, y = (uint32_t)b;
    int32_t sx = (int32_t)x, sy = (int32_t)y;
    int64_t sa = (int64_t)a, sb = (int64_t)b;
    float fa = f32(a), fb = f32(b);
    double da = f64(a), db = f64(b);
    memcpy(scratch, pattern, sizeof scratch);
    switch (which) {
    CASE(x + y) CASE(x - y) CASE(x * y) CASE((uint32_t)(sx / sy)) CASE(x / y) CASE((uint32_t)(sx % sy)) CASE(x % y)
    CASE(x & y) CASE(x | y) CASE(x ^ y) CASE(x << (y & 31)) CASE((uint32_t)(sx >> (y & 31))) CASE(x >> (y & 31))
    CASE(__builtin_rotateleft32(x, y)) CASE(__builtin_rotateright32(x, y))
    CASE(x == y) CASE(x != y) CASE(sx < sy) CASE(x < y) CASE(sx > sy) CASE(x > y) CASE(sx <= sy) CASE(x <= y)
    CASE(sx >= sy) CASE(x >= y) CASE(x == 0)
    CASE(x ? __builtin_clz(x) : 32) CASE(x ? __builtin_ctz(x) : 32) CASE(__builtin_popcount(x))
    CASE((uint32_t)(int32_t)(int8_t)x) CASE((uint32_t)(int32_t)(int16_t)x)
    CASE(a + b) CASE(a - b) CASE(a * b) CASE((uint64_t)(sa / sb)) CASE(a / b) CASE((uint64_t)(sa % sb)) CASE(a % b)
    CASE(a & b) CASE(a | b) CASE(a ^ b) CASE(a << (b & 63)) CASE((uint64_t)(sa >> (b & 63))) CASE(a >> (b & 63))
    CASE(__builtin_rotateleft64(a, b)) CASE(__builtin_rotateright64(a, b))
    CASE(a == b) CASE(a != b) CASE(sa < sb) CASE(a < b) CASE(sa > sb) CASE(a > b) CASE(sa <= sb) CASE(a <= b)
    CASE(sa >= sb) CASE(a >= b) CASE(a == 0)
    CASE(a ? __builtin_clzll(a) : 64) CASE(a ? __builtin_ctzll(a) : 64) CASE(__builtin_popcountll(a))
    CASE((uint64_t)(int64_t)(int8_t)a) CASE((uint64_t)(int64_t)(int16_t)a) CASE((uint64_t)(int64_t)(int32_t)a)
    CASE(x) CASE((uint64_t)(int64_t)sx) CASE((uint64_t)x)
    CASE(b32(fa + fb)) CASE(b32(fa - fb)) CASE(b32(fa * fb)) CASE(b32(fa / fb))
    CASE(b32(__builtin_wasm_min_f32(fa, fb))) CASE(b32(__builtin_wasm_max_f32(fa, fb))) CASE(b32(__builtin_copysignf(fa, fb)))
    CASE(b32(__builtin_fabsf(fa))) CASE(b32(-fa)) CASE(b32(__builtin_ceilf(fa))) CASE(b32(__builtin_floorf(fa)))
    CASE(b32(__builtin_truncf(fa))) CASE(b32(__builtin_rintf(fa))) CASE(b32(__builtin_sqrtf(fa)))
    CASE(fa == fb) CASE(fa != fb) CASE(fa < fb) CASE(fa > fb) CASE(fa <= fb) CASE(fa >= fb)
    CASE(b64(da + db)) CASE(b64(da - db)) CASE(b64(da * db)) CASE(b64(da / db))
    CASE(b64(__builtin_wasm_min_f64(da, db))) CASE(b64(__builtin_wasm_max_f64(da, db))) CASE(b64(__builtin_copysign(da, db)))
    CASE(b64(__builtin_fabs(da))) CASE(b64(-da)) CASE(b64(__builtin_ceil(da))) CASE(b64(__builtin_floor(da)))
    CASE(b64(__builtin_trunc(da))) CASE(b64(__builtin_rint(da))) CASE(b64(__builtin_sqrt(da)))
    CASE(da == db) CASE(da != db) CASE(da < db) CASE(da > db) CASE(da <= db) CASE(da >= db)
    CASE((uint32_t)__builtin_wasm_trunc_s_i32_f32(fa)) CASE((uint32_t)__builtin_wasm_trunc_u_i32_f32(fa))
    CASE((uint32_t)__builtin_wasm_trunc_s_i32_f64(da)) CASE((uint32_t)__builtin_wasm_trunc_u_i32_f64(da))
    CASE(__builtin_wasm_trunc_s_i64_f32(fa)) CASE(__builtin_wasm_trunc_u_i64_f32(fa))
    CASE(__builtin_wasm_trunc_s_i64_f64(da)) CASE(__builtin_wasm_trunc_u_i64_f64(da))
    CASE((uint32_t)__builtin_wasm_trunc_saturate_s_i32_f32(fa)) CASE((uint32_t)__builtin_wasm_trunc_saturate_u_i32_f32(fa))
    CASE((uint32_t)__builtin_wasm_trunc_saturate_s_i32_f64(da)) CASE((uint32_t)__builtin_wasm_trunc_saturate_u_i32_f64(da))
    CASE(__builtin_wasm_trunc_saturate_s_i64_f32(fa)) CASE(__builtin_wasm_trunc_saturate_u_i64_f32(fa))
    CASE(__builtin_wasm_trunc_saturate_s_i64_f64(da)) CASE(__builtin_wasm_trunc_saturate_u_i64_f64(da))
    CASE(b32((float)sx)) CASE(b32((float)x)) CASE(b32((float)sa)) CASE(b32((float)a))
    CASE(b64((double)sx)) CASE(b64((double)x)) CASE(b64((double)sa)) CASE(b64((double)a))
    CASE(b32((float)da)) CASE(b64((double)fa))
    /* Loads and stores at `a` (scratch below 48), as inline assembly: clang
     * would fold widths and offsets.  Offset 7 stays in scratch; offset
     * 0xFFFFFFF0 takes every address past 2^32 (a trap, not a wrap). */
    LOADS(i32, uint32_t, 7) LOADS(i32, uint32_t, 0xFFFFFFF0)
    LOADS(i64, uint64_t, 7) LOADS(i64, uint64_t, 0xFFFFFFF0)
    CASE(b32(LOAD(float, "f32.load 7", address(x)))) CASE(b64(LOAD(double, "f64.load 7", address(x))))
    CASE((STORE("i32.store 7", address(x), y), checksum())) CASE((STORE("i32.store8 7", address(x), y), checksum()))
    CASE((STORE("i32.store16 7", address(x), y), checksum())) CASE((STORE("i64.store 7", address(x), b), checksum()))
    CASE((STORE("i64.store8 7", address(x), b), checksum())) CASE((STORE("i64.store16 7", address(x), b), checksum()))
    CASE((STORE("i64.store32 7", address(x), b), checksum())) CASE((STORE("f32.store 7", address(x), fb), checksum()))
    CASE((STORE("f64.store 7", address(x), db), checksum())) CASE((STORE("i32.store 0xFFFFFFF0", address(x), y), checksum()))
    CASE((fill(address(x), y, (uint32_t)(b >> 32) % 17), checksum()))
    CASE((copy(address(x), address(y % 48), (uint32_t)(b >> 32) % 17), checksum()))
    CASE(__builtin_wasm_memory_grow(0, 0) == __builtin_wasm_memory_size(0))
    CASE(BINARY(uint32_t, "i32.or", x, y)) CASE(UNARY(uint32_t, "i32.extend8_s", x))
    CASE(UNARY(uint32_t, "i32.extend16_s", x)) CASE(b32(UNARY(float, "f32.abs", fa))) CASE(b32(UNARY(float, "f32.neg", fa)))
    CASE(b64(UNARY(double, "f64.abs", da))) CASE(b64(UNARY(double, "f64.neg", da)))
    /* control: select, br_table (this switch), loops, calls, blocks with params */
    CASE(x & 1 ? a : b)
    CASE(functions[x % 3](b)) CASE(((unary_function)(uintptr_t)y)(a))
    CASE(walk(x % 12, b)) CASE(structured(x, b))
    default: return ~(uint64_t)0;
    }
}

__attribute__((export_name("operation_count")))
uint32_t operation_count(void) { return __COUNTER__; }
