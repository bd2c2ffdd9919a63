/*
 * A WebAssembly interpreter for the module's own cold functions.
 *
 * Why: Envoy's V8 compiles every function of a module with TurboFan before
 * the first request and keeps the machine code per Envoy, yet after
 * pre-initialisation a filter runs a few hundred of CPython's ~5,000
 * functions.  So the build (sdk/builder/coldcode.py, which writes everything
 * this file reads) moves the bodies of the functions its profile never saw
 * into passive data segment 0, which V8 keeps as bytes and never compiles, and
 * gives each such function a stub body that calls meshext_interp_enter and
 * meshext_interp_invoke.  This file runs those bodies: a cold function that is
 * reached after all behaves exactly as compiled, only slower.
 *
 * The region coldcode.py appends to segment 0, at the offset META that every
 * stub passes (little endian; the structs below):
 *   struct mxic_header at META,
 *   function_count x struct mxic_function at META + functions_offset
 *     (indexed by Wasm function index: type, table-0 slot, and where the
 *     body is; body_size 0 means "call it natively through its slot"),
 *   type_count x struct mxic_type at META + types_offset (param and result
 *     counts of the type section; the value types themselves are not needed
 *     here because every value is an untyped 64-bit slot),
 *   the bodies at META + bodies_offset, each exactly the code section's
 *     entry (local declarations, expression, final 0x0B).
 * Calls to native code (imports, compiled functions, call_indirect) and
 * global accesses go through three functions coldcode.py generates and puts
 * in table 0 (their slots are in the header), so signature checks and global
 * semantics are Wasm's own.  Memory accesses are this interpreter's own loads
 * and stores: interpreted and compiled code share the one linear memory.
 *
 * Value slots: every Wasm value is a uint64_t; i64/f64 use all 64 bits, i32/f32
 * the low 32 (upper bits unspecified: read them as (uint32_t)slot).
 *
 * Nothing is read or allocated before the first stub runs (the module is a
 * pre-initialised snapshot), and each function's body is copied out of the
 * segment and scanned on its first call only.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "segment.h"

#define STACK_SLOTS (128 * 1024) /* value slots (1 MiB), shared by all nested interpreted frames */
#define LABEL_SLOTS (16 * 1024)  /* open blocks, loops and ifs of all nested interpreted frames */
#define BODY_PADDING 16          /* zero bytes after a copied body: a scan of a broken body stops there */

struct mxic_header {
    char magic[4];
    uint32_t version, function_count, type_count, functions_offset, types_offset, valtypes_offset, bodies_offset;
    uint32_t native_call_slot, global_get_slot, global_set_slot, total_size;
};
struct mxic_function {
    uint32_t type, table_slot, body_offset, body_size;
};
struct mxic_type {
    uint16_t param_count, result_count;
    uint32_t valtypes;
};
_Static_assert(sizeof(struct mxic_header) == 48, "the header is 12 u32");
_Static_assert(sizeof(struct mxic_function) == 16, "a function entry is 4 u32");
_Static_assert(sizeof(struct mxic_type) == 8, "a type entry is 2 u16 and a u32");

/* A block, loop or if of a body.  They are numbered in the order they start,
 * and the interpreter tracks `next_block`, the number of blocks that start
 * before the current instruction: entering one is then an index, not a search.
 * Every jump also sets next_block, from the counts recorded here. */
struct block {
    uint32_t body;       /* offset of its first instruction (after the block type) */
    uint32_t else_at;    /* offset of its `else`; 0 if none (offset 0 is never an instruction) */
    uint32_t end;        /* offset of its `end` */
    uint32_t after_else; /* blocks that start before the else arm */
    uint32_t after_end;  /* blocks that start before its `end` */
    uint16_t params, results;
    uint8_t loop;
};

/* A function's body, prepared on its first call. */
struct body {
    uint8_t *code;
    uint32_t start;  /* offset of the first instruction */
    uint32_t locals; /* declared locals (the params are not counted) */
    struct block *blocks;
};

/* An open block: where its operand stack starts, and which block it is. */
struct label {
    uint64_t *height;
    uint32_t block;
};

static uint32_t meta;
static struct mxic_header header;
static const struct mxic_function *functions;
static const struct mxic_type *types;
static struct body **bodies; /* by function index; NULL until its first call */
static uint64_t *stack;
/* The first free slot and label for a new frame.  An interpreted frame keeps
 * its own tops in locals and stores them here before every call, so that a
 * stub reached through native code builds its frame above the caller's. */
static uint64_t *stack_top;
static struct label *labels, *label_top;

static _Noreturn void trap(void) { __builtin_trap(); }

static void *allocate(size_t size) {
    void *memory = malloc(size ? size : 1);
    if (!memory) trap();
    return memory;
}

/* `size` bytes of the region, `offset` bytes after META, in malloc'ed memory
 * with `padding` zero bytes after them. */
static void *read_region(uint64_t offset, uint64_t size, uint32_t padding) {
    if (offset + size > header.total_size || meta + offset + size > UINT32_MAX) trap();
    uint8_t *memory = allocate((size_t)(size + padding));
    meshext_copy_from_segment(memory, meta + (uint32_t)offset, (uint32_t)size);
    memset(memory + size, 0, padding);
    return memory;
}

static void start(uint32_t at) {
    meta = at;
    meshext_copy_from_segment(&header, at, sizeof header);
    if (memcmp(header.magic, "MXIC", 4) != 0 || header.version != 1) trap();
    functions = read_region(header.functions_offset, (uint64_t)header.function_count * sizeof *functions, 0);
    types = read_region(header.types_offset, (uint64_t)header.type_count * sizeof *types, 0);
    bodies = calloc(header.function_count, sizeof *bodies);
    stack = allocate(STACK_SLOTS * sizeof *stack);
    labels = allocate(LABEL_SLOTS * sizeof *labels);
    if (!bodies) trap();
    stack_top = stack;
    label_top = labels;
}

/* LEB128.  These take and return values (no pointer to the interpreter's
 * `ip` escapes), so the hot loop keeps `ip` in a Wasm local. */
static uint64_t leb_value(const uint8_t *p, int is_signed) {
    uint64_t value = 0;
    unsigned shift = 0;
    uint8_t byte;
    do {
        byte = *p++;
        if (shift < 64) value |= (uint64_t)(byte & 0x7F) << shift;
        shift += 7;
    } while (byte & 0x80);
    if (is_signed && shift < 64 && (byte & 0x40)) value |= ~(uint64_t)0 << shift;
    return value;
}

static const uint8_t *leb_skip(const uint8_t *p) {
    while (*p++ & 0x80) {}
    return p;
}

/* Declares `name` and reads an unsigned immediate into it; most are one byte. */
#define U32_IMMEDIATE(name)                                                    \
    uint32_t name;                                                             \
    if (*ip < 0x80) {                                                          \
        name = *ip++;                                                          \
    } else {                                                                   \
        name = (uint32_t)leb_value(ip, 0);                                     \
        ip = leb_skip(ip);                                                     \
    }

/* Params and results of a block type (s33): 0x40 empty, a value type, or a type index. */
static void block_type(const uint8_t *at, struct block *block) {
    int64_t type = (int64_t)leb_value(at, 1);
    block->params = block->results = 0;
    if (type >= -4 && type <= -1) {  /* 0x7F i32, 0x7E i64, 0x7D f32, 0x7C f64 */
        block->results = 1;
    } else if (type >= 0 && type < header.type_count) {
        block->params = types[type].param_count;
        block->results = types[type].result_count;
    } else if (type != -64) {  /* 0x40; anything else (v128, references) is not run here */
        trap();
    }
}

/* The offset after the instruction at `at` (a body ending at `end`); traps on
 * one this interpreter does not run. */
static const uint8_t *skip_instruction(const uint8_t *at, const uint8_t *end) {
    const uint8_t *ip = at + 1;
    uint8_t op = *at;
    if (op >= 0x45 && op <= 0xC4) return ip;  /* numeric: no immediates */
    if (op >= 0x28 && op <= 0x3E) return leb_skip(leb_skip(ip));  /* loads, stores: memarg */
    switch (op) {
    case 0x00: case 0x01: case 0x05: case 0x0B: case 0x0F: case 0x1A: case 0x1B:
        return ip;
    case 0x02: case 0x03: case 0x04: case 0x0C: case 0x0D: case 0x10:
    case 0x20: case 0x21: case 0x22: case 0x23: case 0x24:
    case 0x3F: case 0x40: case 0x41: case 0x42:
        return leb_skip(ip);
    case 0x0E: {  /* br_table: a vector of labels, then the default */
        uint32_t count = (uint32_t)leb_value(ip, 0);
        ip = leb_skip(ip);
        for (uint64_t i = 0; i <= count && ip < end; i++) ip = leb_skip(ip);
        return ip;
    }
    case 0x11:  /* call_indirect type table */
        return leb_skip(leb_skip(ip));
    case 0x1C: {  /* typed select: a vector of one-byte value types */
        uint32_t count = (uint32_t)leb_value(ip, 0);
        ip = leb_skip(ip);
        return count > (uint32_t)(end - ip) ? end + 1 : ip + count;
    }
    case 0x43: return ip + 4;
    case 0x44: return ip + 8;
    case 0xFC: {
        uint32_t sub = (uint32_t)leb_value(ip, 0);
        ip = leb_skip(ip);
        if (sub <= 7) return ip;                      /* saturating truncations */
        if (sub == 10) return leb_skip(leb_skip(ip)); /* memory.copy 0 0 */
        if (sub == 11) return leb_skip(ip);           /* memory.fill 0 */
        trap();
    }
    default:
        trap();
    }
}

/* Walks the instructions of `code` from `ip` to `end` and returns how many
 * blocks start there; with `blocks` (and `open`, room for as many indices)
 * it also records each block's offsets.  Traps on a malformed body. */
static uint32_t scan_blocks(const uint8_t *code, const uint8_t *ip, const uint8_t *end,
                            struct block *blocks, uint32_t *open) {
    uint32_t count = 0, depth = 0;
    for (;;) {
        if (ip >= end) trap();
        const uint8_t *at = ip;
        ip = skip_instruction(at, end);
        if (ip > end) trap();
        switch (*at) {
        case 0x02: case 0x03: case 0x04:
            if (blocks) {
                struct block *block = &blocks[count];
                block_type(at + 1, block);
                block->body = (uint32_t)(ip - code);
                block->else_at = 0;
                block->loop = *at == 0x03;
                open[depth] = count;
            }
            depth++;
            count++;
            break;
        case 0x05:
            if (!depth) trap();
            if (blocks) {
                blocks[open[depth - 1]].else_at = (uint32_t)(at - code);
                blocks[open[depth - 1]].after_else = count;
            }
            break;
        case 0x0B:
            if (!depth) {  /* the function's own end: the last byte */
                if (ip != end) trap();
                return count;
            }
            depth--;
            if (blocks) {
                blocks[open[depth]].end = (uint32_t)(at - code);
                blocks[open[depth]].after_end = count;
            }
            break;
        }
    }
}

/* The body of function `index`, copied out of segment 0 and scanned on its first call. */
static const struct body *prepare(uint32_t index) {
    if (bodies[index]) return bodies[index];
    const struct mxic_function *function = &functions[index];
    if (!function->body_size) trap();
    uint8_t *code = read_region((uint64_t)header.bodies_offset + function->body_offset, function->body_size, BODY_PADDING);
    const uint8_t *ip = code, *end = code + function->body_size;
    uint64_t locals = 0;
    uint32_t groups = (uint32_t)leb_value(ip, 0);
    ip = leb_skip(ip);
    while (groups--) {  /* a group: a count, then one value-type byte */
        locals += (uint32_t)leb_value(ip, 0);
        ip = leb_skip(ip) + 1;
        if (locals > STACK_SLOTS || ip >= end) trap();
    }
    struct body *body = allocate(sizeof *body);
    body->code = code;
    body->start = (uint32_t)(ip - code);
    body->locals = (uint32_t)locals;
    uint32_t count = scan_blocks(code, ip, end, NULL, NULL);
    uint32_t *open = allocate(count * sizeof *open);
    body->blocks = allocate(count * sizeof *body->blocks);
    scan_blocks(code, ip, end, body->blocks, open);
    free(open);
    bodies[index] = body;
    return body;
}

/* Memory.  Wasm's effective address is base + offset without wrapping; past
 * 2^32 it traps.  Below, the access itself is a Wasm load or store at that
 * address, so Wasm's bounds check traps as the compiled code's would.  Volatile
 * because address 0 is ordinary memory here (clang must not treat it as null),
 * aligned(1) because unaligned accesses are legal. */
typedef uint16_t __attribute__((aligned(1))) unaligned_u16;
typedef uint32_t __attribute__((aligned(1))) unaligned_u32;
typedef uint64_t __attribute__((aligned(1))) unaligned_u64;

static uintptr_t effective_address(uint64_t base, uint32_t offset) {
    uint64_t address = (uint64_t)(uint32_t)base + offset;
    if (address >> 32) trap();
    return (uintptr_t)address;
}

static uint64_t load(uint8_t op, uintptr_t address) {
    volatile const uint8_t *p8 = (volatile const uint8_t *)address;
    volatile const unaligned_u16 *p16 = (volatile const unaligned_u16 *)address;
    volatile const unaligned_u32 *p32 = (volatile const unaligned_u32 *)address;
    switch (op) {
    case 0x28: case 0x2A: return *p32;                                      /* i32.load, f32.load */
    case 0x29: case 0x2B: return *(volatile const unaligned_u64 *)address; /* i64.load, f64.load */
    case 0x2C: return (uint32_t)(int32_t)(int8_t)*p8;                      /* i32.load8_s */
    case 0x2D: case 0x31: return *p8;                                       /* i32/i64.load8_u */
    case 0x2E: return (uint32_t)(int32_t)(int16_t)*p16;                    /* i32.load16_s */
    case 0x2F: case 0x33: return *p16;                                      /* i32/i64.load16_u */
    case 0x30: return (uint64_t)(int64_t)(int8_t)*p8;                      /* i64.load8_s */
    case 0x32: return (uint64_t)(int64_t)(int16_t)*p16;                    /* i64.load16_s */
    case 0x34: return (uint64_t)(int64_t)(int32_t)*p32;                    /* i64.load32_s */
    default: return *p32;                                                   /* 0x35 i64.load32_u */
    }
}

static void store(uint8_t op, uintptr_t address, uint64_t value) {
    switch (op) {
    case 0x36: case 0x38: case 0x3E: *(volatile unaligned_u32 *)address = (uint32_t)value; break; /* i32, f32, i64.store32 */
    case 0x37: case 0x39: *(volatile unaligned_u64 *)address = value; break;                     /* i64, f64 */
    case 0x3A: case 0x3C: *(volatile uint8_t *)address = (uint8_t)value; break;                  /* store8 */
    default: *(volatile unaligned_u16 *)address = (uint16_t)value; break;                        /* 0x3B, 0x3D store16 */
    }
}

/* memory.copy and memory.fill as Wasm's own instructions: they check the
 * whole range before writing anything (memmove would trap halfway). */
__attribute__((target("bulk-memory")))
static void memory_copy(uint32_t destination, uint32_t source, uint32_t size) {
    __asm__ volatile("local.get %0\n\tlocal.get %1\n\tlocal.get %2\n\tmemory.copy 0, 0"
                     :: "r"(destination), "r"(source), "r"(size) : "memory");
}

__attribute__((target("bulk-memory")))
static void memory_fill(uint32_t destination, uint32_t value, uint32_t size) {
    __asm__ volatile("local.get %0\n\tlocal.get %1\n\tlocal.get %2\n\tmemory.fill 0"
                     :: "r"(destination), "r"(value), "r"(size) : "memory");
}

/* Floats travel as bit patterns; these are Wasm reinterpretations. */
static float f32_of(uint64_t slot) {
    uint32_t bits = (uint32_t)slot;
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
}
static double f64_of(uint64_t slot) {
    double value;
    memcpy(&value, &slot, sizeof value);
    return value;
}
static uint64_t f32_bits(float value) {
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    return bits;
}
static uint64_t f64_bits(double value) {
    uint64_t bits;
    memcpy(&bits, &value, sizeof bits);
    return bits;
}

/* Numeric instructions with two operands (0x46..0xA6).  Integer arithmetic
 * is unsigned (wrapping, as Wasm's); the float operators compile to the Wasm
 * instructions of the same name. */
static int is_binary(uint8_t op) {
    return (op >= 0x46 && op <= 0x4F) || (op >= 0x51 && op <= 0x66) || (op >= 0x6A && op <= 0x78) ||
           (op >= 0x7C && op <= 0x8A) || (op >= 0x92 && op <= 0x98) || (op >= 0xA0 && op <= 0xA6);
}

static uint64_t binary(uint8_t op, uint64_t x, uint64_t y) {
    uint32_t a = (uint32_t)x, b = (uint32_t)y;
    float fa = f32_of(x), fb = f32_of(y);
    double da = f64_of(x), db = f64_of(y);
    switch (op) {
    case 0x46: return a == b;
    case 0x47: return a != b;
    case 0x48: return (int32_t)a < (int32_t)b;
    case 0x49: return a < b;
    case 0x4A: return (int32_t)a > (int32_t)b;
    case 0x4B: return a > b;
    case 0x4C: return (int32_t)a <= (int32_t)b;
    case 0x4D: return a <= b;
    case 0x4E: return (int32_t)a >= (int32_t)b;
    case 0x4F: return a >= b;
    case 0x51: return x == y;
    case 0x52: return x != y;
    case 0x53: return (int64_t)x < (int64_t)y;
    case 0x54: return x < y;
    case 0x55: return (int64_t)x > (int64_t)y;
    case 0x56: return x > y;
    case 0x57: return (int64_t)x <= (int64_t)y;
    case 0x58: return x <= y;
    case 0x59: return (int64_t)x >= (int64_t)y;
    case 0x5A: return x >= y;
    case 0x5B: return fa == fb;
    case 0x5C: return fa != fb;
    case 0x5D: return fa < fb;
    case 0x5E: return fa > fb;
    case 0x5F: return fa <= fb;
    case 0x60: return fa >= fb;
    case 0x61: return da == db;
    case 0x62: return da != db;
    case 0x63: return da < db;
    case 0x64: return da > db;
    case 0x65: return da <= db;
    case 0x66: return da >= db;
    case 0x6A: return a + b;
    case 0x6B: return a - b;
    case 0x6C: return a * b;
    case 0x6D:  /* div_s: by zero and INT32_MIN / -1 trap */
        if (b == 0 || (a == 0x80000000u && b == 0xFFFFFFFFu)) trap();
        return (uint32_t)((int32_t)a / (int32_t)b);
    case 0x6E: if (b == 0) trap(); return a / b;
    case 0x6F:  /* rem_s: INT32_MIN % -1 is 0 (C leaves it undefined) */
        if (b == 0) trap();
        return b == 0xFFFFFFFFu ? 0 : (uint32_t)((int32_t)a % (int32_t)b);
    case 0x70: if (b == 0) trap(); return a % b;
    case 0x71: return a & b;
    case 0x72: return a | b;
    case 0x73: return a ^ b;
    case 0x74: return a << (b & 31);
    case 0x75: return (uint32_t)((int32_t)a >> (b & 31));
    case 0x76: return a >> (b & 31);
    case 0x77: return __builtin_rotateleft32(a, b);
    case 0x78: return __builtin_rotateright32(a, b);
    case 0x7C: return x + y;
    case 0x7D: return x - y;
    case 0x7E: return x * y;
    case 0x7F:
        if (y == 0 || (x == 0x8000000000000000u && y == UINT64_MAX)) trap();
        return (uint64_t)((int64_t)x / (int64_t)y);
    case 0x80: if (y == 0) trap(); return x / y;
    case 0x81:
        if (y == 0) trap();
        return y == UINT64_MAX ? 0 : (uint64_t)((int64_t)x % (int64_t)y);
    case 0x82: if (y == 0) trap(); return x % y;
    case 0x83: return x & y;
    case 0x84: return x | y;
    case 0x85: return x ^ y;
    case 0x86: return x << (y & 63);
    case 0x87: return (uint64_t)((int64_t)x >> (y & 63));
    case 0x88: return x >> (y & 63);
    case 0x89: return __builtin_rotateleft64(x, y);
    case 0x8A: return __builtin_rotateright64(x, y);
    case 0x92: return f32_bits(fa + fb);
    case 0x93: return f32_bits(fa - fb);
    case 0x94: return f32_bits(fa * fb);
    case 0x95: return f32_bits(fa / fb);
    case 0x96: return f32_bits(__builtin_wasm_min_f32(fa, fb));
    case 0x97: return f32_bits(__builtin_wasm_max_f32(fa, fb));
    case 0x98: return f32_bits(__builtin_copysignf(fa, fb));
    case 0xA0: return f64_bits(da + db);
    case 0xA1: return f64_bits(da - db);
    case 0xA2: return f64_bits(da * db);
    case 0xA3: return f64_bits(da / db);
    case 0xA4: return f64_bits(__builtin_wasm_min_f64(da, db));
    case 0xA5: return f64_bits(__builtin_wasm_max_f64(da, db));
    default: return f64_bits(__builtin_copysign(da, db)); /* 0xA6 */
    }
}

/* Numeric instructions with one operand (the rest of 0x45..0xC4).  The
 * float->int truncations are Wasm's trapping instructions, the rounding
 * functions compile to f32/f64.ceil, floor, trunc, nearest, sqrt. */
static uint64_t unary(uint8_t op, uint64_t x) {
    uint32_t a = (uint32_t)x;
    float f = f32_of(x);
    double d = f64_of(x);
    switch (op) {
    case 0x45: return a == 0;
    case 0x50: return x == 0;
    case 0x67: return a ? (uint32_t)__builtin_clz(a) : 32;
    case 0x68: return a ? (uint32_t)__builtin_ctz(a) : 32;
    case 0x69: return (uint32_t)__builtin_popcount(a);
    case 0x79: return x ? (uint64_t)__builtin_clzll(x) : 64;
    case 0x7A: return x ? (uint64_t)__builtin_ctzll(x) : 64;
    case 0x7B: return (uint64_t)__builtin_popcountll(x);
    case 0x8B: return f32_bits(__builtin_fabsf(f));
    case 0x8C: return f32_bits(-f);
    case 0x8D: return f32_bits(__builtin_ceilf(f));
    case 0x8E: return f32_bits(__builtin_floorf(f));
    case 0x8F: return f32_bits(__builtin_truncf(f));
    case 0x90: return f32_bits(__builtin_rintf(f)); /* ties to even: f32.nearest */
    case 0x91: return f32_bits(__builtin_sqrtf(f));
    case 0x99: return f64_bits(__builtin_fabs(d));
    case 0x9A: return f64_bits(-d);
    case 0x9B: return f64_bits(__builtin_ceil(d));
    case 0x9C: return f64_bits(__builtin_floor(d));
    case 0x9D: return f64_bits(__builtin_trunc(d));
    case 0x9E: return f64_bits(__builtin_rint(d));
    case 0x9F: return f64_bits(__builtin_sqrt(d));
    case 0xA7: return a;                                             /* i32.wrap_i64 */
    case 0xA8: return (uint32_t)__builtin_wasm_trunc_s_i32_f32(f);
    case 0xA9: return (uint32_t)__builtin_wasm_trunc_u_i32_f32(f);
    case 0xAA: return (uint32_t)__builtin_wasm_trunc_s_i32_f64(d);
    case 0xAB: return (uint32_t)__builtin_wasm_trunc_u_i32_f64(d);
    case 0xAC: return (uint64_t)(int64_t)(int32_t)a;                 /* i64.extend_i32_s */
    case 0xAD: return a;                                             /* i64.extend_i32_u */
    case 0xAE: return (uint64_t)__builtin_wasm_trunc_s_i64_f32(f);
    case 0xAF: return (uint64_t)__builtin_wasm_trunc_u_i64_f32(f);
    case 0xB0: return (uint64_t)__builtin_wasm_trunc_s_i64_f64(d);
    case 0xB1: return (uint64_t)__builtin_wasm_trunc_u_i64_f64(d);
    case 0xB2: return f32_bits((float)(int32_t)a);
    case 0xB3: return f32_bits((float)a);
    case 0xB4: return f32_bits((float)(int64_t)x);
    case 0xB5: return f32_bits((float)x);
    case 0xB6: return f32_bits((float)d);                            /* f32.demote_f64 */
    case 0xB7: return f64_bits((double)(int32_t)a);
    case 0xB8: return f64_bits((double)a);
    case 0xB9: return f64_bits((double)(int64_t)x);
    case 0xBA: return f64_bits((double)x);
    case 0xBB: return f64_bits((double)f);                           /* f64.promote_f32 */
    case 0xBC: case 0xBE: return a;                                  /* i32/f32 reinterpret: same bits */
    case 0xBD: case 0xBF: return x;                                  /* i64/f64 reinterpret */
    case 0xC0: return (uint32_t)(int32_t)(int8_t)a;                  /* i32.extend8_s */
    case 0xC1: return (uint32_t)(int32_t)(int16_t)a;                 /* i32.extend16_s */
    case 0xC2: return (uint64_t)(int64_t)(int8_t)x;                  /* i64.extend8_s */
    case 0xC3: return (uint64_t)(int64_t)(int16_t)x;                 /* i64.extend16_s */
    default: return (uint64_t)(int64_t)(int32_t)x;                   /* 0xC4 i64.extend32_s */
    }
}

/* 0xFC 0..7, the saturating truncations (NaN -> 0, out of range -> the nearest bound). */
__attribute__((target("nontrapping-fptoint")))
static uint64_t truncate_saturating(uint32_t sub, uint64_t x) {
    float f = f32_of(x);
    double d = f64_of(x);
    switch (sub) {
    case 0: return (uint32_t)__builtin_wasm_trunc_saturate_s_i32_f32(f);
    case 1: return (uint32_t)__builtin_wasm_trunc_saturate_u_i32_f32(f);
    case 2: return (uint32_t)__builtin_wasm_trunc_saturate_s_i32_f64(d);
    case 3: return (uint32_t)__builtin_wasm_trunc_saturate_u_i32_f64(d);
    case 4: return (uint64_t)__builtin_wasm_trunc_saturate_s_i64_f32(f);
    case 5: return (uint64_t)__builtin_wasm_trunc_saturate_u_i64_f32(f);
    case 6: return (uint64_t)__builtin_wasm_trunc_saturate_s_i64_f64(d);
    default: return (uint64_t)__builtin_wasm_trunc_saturate_u_i64_f64(d); /* 7 */
    }
}

static void run(uint32_t index, uint64_t *locals);

/* Calls with the top param_count(type) values of `sp` as arguments: function
 * `index` interpreted when `interpreted`, else table-0 slot `slot` through the
 * generated native_call.  Returns the stack top after the results. */
static uint64_t *call(uint32_t type, uint32_t index, int interpreted, uint32_t slot, uint64_t *sp, struct label *lt) {
    if (type >= header.type_count) trap();
    uint64_t *args = sp - types[type].param_count;
    if (types[type].result_count > stack + STACK_SLOTS - args) trap(); /* results beyond the args */
    stack_top = sp;
    label_top = lt;
    if (interpreted) run(index, args);
    else ((void (*)(uint32_t, uint32_t, uint64_t *))(uintptr_t)header.native_call_slot)(type, slot, args);
    return args + types[type].result_count;
}

/* Runs function `index` whose params are at `locals`; leaves its results there. */
static void run(uint32_t index, uint64_t *locals) {
    const struct body *body = prepare(index);
    const struct mxic_type *type = &types[functions[index].type];
    uint64_t *const limit = stack + STACK_SLOTS - 1; /* checked before every instruction: room for one push */
    uint64_t *sp = locals + type->param_count;
    if (body->locals > (uint32_t)(stack + STACK_SLOTS - sp)) trap();
    memset(sp, 0, body->locals * sizeof *sp);
    sp += body->locals;
    struct label *const frame = label_top; /* this frame's labels start here */
    struct label *lt = frame;
    const uint8_t *const code = body->code;
    const uint8_t *ip = code + body->start;
    uint32_t next_block = 0; /* blocks that start before ip (see struct block) */
    uint32_t depth;          /* a branch's label index */
    for (;;) {
        if (sp > limit) trap();
        uint8_t op = *ip++;
        switch (op) {
        case 0x00: trap(); /* unreachable */
        case 0x01: break;  /* nop */
        case 0x02: case 0x03: case 0x04: { /* block, loop, if */
            const struct block *block = &body->blocks[next_block];
            int taken = op != 0x04 || (uint32_t)*--sp;
            if (lt == labels + LABEL_SLOTS) trap();
            lt->height = sp - block->params;
            lt->block = next_block;
            lt++;
            if (taken) {
                ip = code + block->body;
                next_block++;
            } else if (block->else_at) {
                ip = code + block->else_at + 1;
                next_block = block->after_else;
            } else { /* its `end` pops the label */
                ip = code + block->end;
                next_block = block->after_end;
            }
            break;
        }
        case 0x05: { /* else, reached at the end of the then arm: go to the if's end */
            const struct block *block = &body->blocks[lt[-1].block];
            ip = code + block->end;
            next_block = block->after_end;
            break;
        }
        case 0x0B: /* end */
            if (lt == frame) goto done;
            lt--;
            break;
        case 0x0C: { /* br */
            U32_IMMEDIATE(label);
            depth = label;
            goto branch;
        }
        case 0x0D: { /* br_if */
            U32_IMMEDIATE(label);
            depth = label;
            if ((uint32_t)*--sp) goto branch;
            break;
        }
        case 0x0E: { /* br_table */
            U32_IMMEDIATE(count);
            uint32_t i = (uint32_t)*--sp;
            if (i > count) i = count; /* the default is the last label */
            while (i--) ip = leb_skip(ip);
            depth = (uint32_t)leb_value(ip, 0);
            goto branch;
        }
        case 0x0F: goto done; /* return */
        case 0x10: {          /* call */
            U32_IMMEDIATE(callee);
            if (callee >= header.function_count) trap();
            const struct mxic_function *function = &functions[callee];
            sp = call(function->type, callee, function->body_size > 0, function->table_slot, sp, lt);
            break;
        }
        case 0x11: { /* call_indirect type 0: a cold function's slot holds its stub */
            U32_IMMEDIATE(callee_type);
            U32_IMMEDIATE(table);
            if (table != 0) trap();
            uint32_t slot = (uint32_t)*--sp;
            sp = call(callee_type, 0, 0, slot, sp, lt);
            break;
        }
        case 0x1A: sp--; break; /* drop */
        case 0x1C: {            /* select t: one value type */
            U32_IMMEDIATE(count);
            ip += count;
            __attribute__((fallthrough));
        }
        case 0x1B: { /* select */
            uint32_t condition = (uint32_t)sp[-1];
            sp -= 2;
            if (!condition) sp[-1] = sp[0];
            break;
        }
        case 0x20: { U32_IMMEDIATE(local); *sp++ = locals[local]; break; }
        case 0x21: { U32_IMMEDIATE(local); locals[local] = *--sp; break; }
        case 0x22: { U32_IMMEDIATE(local); locals[local] = sp[-1]; break; }
        case 0x23: { /* global.get and .set through the generated functions */
            U32_IMMEDIATE(global);
            *sp++ = ((uint64_t (*)(uint32_t))(uintptr_t)header.global_get_slot)(global);
            break;
        }
        case 0x24: {
            U32_IMMEDIATE(global);
            sp--;
            ((void (*)(uint32_t, uint64_t))(uintptr_t)header.global_set_slot)(global, *sp);
            break;
        }
        case 0x28: case 0x29: case 0x2A: case 0x2B: case 0x2C: case 0x2D: case 0x2E:
        case 0x2F: case 0x30: case 0x31: case 0x32: case 0x33: case 0x34: case 0x35: {
            ip = leb_skip(ip); /* the alignment hint */
            U32_IMMEDIATE(offset);
            sp[-1] = load(op, effective_address(sp[-1], offset));
            break;
        }
        case 0x36: case 0x37: case 0x38: case 0x39: case 0x3A: case 0x3B: case 0x3C: case 0x3D: case 0x3E: {
            ip = leb_skip(ip);
            U32_IMMEDIATE(offset);
            sp -= 2;
            store(op, effective_address(sp[0], offset), sp[1]);
            break;
        }
        case 0x3F: /* memory.size 0 */
            ip = leb_skip(ip);
            *sp++ = (uint32_t)__builtin_wasm_memory_size(0);
            break;
        case 0x40: /* memory.grow 0: the old size, or -1 */
            ip = leb_skip(ip);
            sp[-1] = (uint32_t)__builtin_wasm_memory_grow(0, (uint32_t)sp[-1]);
            break;
        case 0x41: /* i32.const (s32: its low 32 bits) */
            *sp++ = (uint32_t)leb_value(ip, 1);
            ip = leb_skip(ip);
            break;
        case 0x42: /* i64.const */
            *sp++ = leb_value(ip, 1);
            ip = leb_skip(ip);
            break;
        case 0x43: { /* f32.const: 4 bytes, little endian as Wasm's memory */
            uint32_t bits;
            memcpy(&bits, ip, sizeof bits);
            *sp++ = bits;
            ip += 4;
            break;
        }
        case 0x44: /* f64.const */
            memcpy(sp++, ip, 8);
            ip += 8;
            break;
        case 0xFC: {
            U32_IMMEDIATE(sub);
            if (sub <= 7) {
                sp[-1] = truncate_saturating(sub, sp[-1]);
            } else if (sub == 10) { /* memory.copy 0 0: destination, source, size */
                ip = leb_skip(leb_skip(ip));
                sp -= 3;
                memory_copy((uint32_t)sp[0], (uint32_t)sp[1], (uint32_t)sp[2]);
            } else if (sub == 11) { /* memory.fill 0: destination, byte, size */
                ip = leb_skip(ip);
                sp -= 3;
                memory_fill((uint32_t)sp[0], (uint32_t)sp[1], (uint32_t)sp[2]);
            } else {
                trap();
            }
            break;
        }
        default:
            if (op < 0x45 || op > 0xC4) trap();
            if (is_binary(op)) {
                sp--;
                sp[-1] = binary(op, sp[-1], sp[0]);
            } else {
                sp[-1] = unary(op, sp[-1]);
            }
            break;
        }
        continue;

    branch: /* to label `depth`: keep its arity of values on its height */
        if (depth == (uint32_t)(lt - frame)) goto done; /* the function's own label */
        {
            struct label *target = lt - 1 - depth;
            const struct block *block = &body->blocks[target->block];
            uint32_t arity = block->loop ? block->params : block->results;
            memmove(target->height, sp - arity, arity * sizeof *sp);
            sp = target->height + arity;
            lt = target + 1;
            if (block->loop) { /* back to its first instruction, label kept */
                ip = code + block->body;
                next_block = target->block + 1;
            } else { /* on to its `end`, which pops the label */
                ip = code + block->end;
                next_block = block->after_end;
            }
        }
    }

done: /* the results are the top of the operand stack */
    memmove(locals, sp - type->result_count, type->result_count * sizeof *sp);
    label_top = frame;
}

__attribute__((export_name("meshext_interp_enter")))
uint64_t *meshext_interp_enter(uint32_t at, uint32_t function) {
    if (!stack) start(at);
    if (at != meta || function >= header.function_count || functions[function].type >= header.type_count) trap();
    uint32_t count = types[functions[function].type].param_count;
    if (count > (uint32_t)(stack + STACK_SLOTS - stack_top)) trap();
    uint64_t *args = stack_top;
    stack_top += count;
    return args;
}

__attribute__((export_name("meshext_interp_invoke")))
uint64_t meshext_interp_invoke(uint32_t function) {
    const struct mxic_type *type = &types[functions[function].type];
    uint64_t *args = stack_top - type->param_count;
    run(function, args);
    stack_top = args;
    return type->result_count ? args[0] : 0;
}
