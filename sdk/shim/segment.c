/*
 * Reads of the passive data segments the build packs in blocks of DEFLATE
 * (src/meshext/packed_segment.py documents the layout): segment 0 (file
 * data, cold code) and segment 1, the deferred snapshot
 * (wasm_binary.defer_snapshot), which meshext_restore_snapshot writes into
 * memory on the module's first call:
 *
 *   "MXZ1" u32 block_size u32 unpacked_size u32 block_count
 *   u32 starts[block_count + 1]   compressed block i is [starts[i], starts[i + 1])
 *   the blocks, raw DEFLATE (RFC 1951), each unpacking to block_size bytes
 *   (the last to what is left)
 *
 * Offsets callers pass count in the unpacked bytes.  The first read copies
 * the header and the table in with memory.init; a read then inflates each
 * block it covers, keeping the last one inflated (reads come in runs: a
 * file's bytes, a cold function's body).  Nothing is read at build time:
 * pre-initialisation serves files from memory.
 *
 * The decoder is written here because the shim links no zlib (wasi-libc has
 * none and CPython's zlib module is not in the module); it decodes only what
 * zlib's compressor writes, and traps on anything it cannot decode, as
 * memory.init traps outside the segment.
 *
 * The decoder keeps all its state behind the pointers it is given and reads
 * no static data (its tables are computed), because the snapshot's restore
 * runs it before memory holds anything: every variable of the shim, and the
 * shadow stack the snapshot's stack pointer points into, are memory the
 * restore is about to write.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "segment.h"

#define PACKED_HEADER_SIZE 16
#define PACKED_MAGIC 0x315A584Du /* "MXZ1" read as a little-endian u32 */

static _Noreturn void trap(void) { __builtin_trap(); }

/* memory.init from data segment 0 and from segment 1, the deferred snapshot
 * (the segment index is an immediate; clang has no builtin for it any more,
 * and only these functions need bulk memory). */
__attribute__((target("bulk-memory")))
static void copy_packed(void *destination, uint32_t offset, uint32_t size) {
    __asm__ volatile("local.get %0\n\tlocal.get %1\n\tlocal.get %2\n\tmemory.init 0, 0"
                     :: "r"(destination), "r"(offset), "r"(size) : "memory");
}

__attribute__((target("bulk-memory")))
static void copy_snapshot(void *destination, uint32_t offset, uint32_t size) {
    __asm__ volatile("local.get %0\n\tlocal.get %1\n\tlocal.get %2\n\tmemory.init 1, 0"
                     :: "r"(destination), "r"(offset), "r"(size) : "memory");
}

static uint32_t u32_at(const uint8_t *at) {
    return at[0] | (uint32_t)at[1] << 8 | (uint32_t)at[2] << 16 | (uint32_t)at[3] << 24;
}

/* ---- DEFLATE ---- */

typedef struct {
    const uint8_t *in;
    uint32_t in_size, in_position;
    uint64_t bit_buffer;  /* bits above bit_count are zero or the next input bytes' own */
    uint32_t bit_count;
    uint8_t *out;
    uint32_t out_size, out_position;
} inflater;

/* Codes up to this many bits decode with one table lookup; longer ones (rare:
 * zlib's codes are mostly shorter) a bit at a time. */
#define FAST_BITS 10

/* A canonical Huffman code: how many codes of each length, the symbols in
 * code order (288 is the largest alphabet: literals and lengths), and for
 * each FAST_BITS bits as they arrive, (code length << 9 | symbol) of the
 * code they begin with, 0 when that code is longer. */
typedef struct {
    uint16_t count[16];
    uint16_t symbol[288];
    uint16_t fast[1 << FAST_BITS];
} huffman;

/* Everything one inflate() works on besides its input and output. */
typedef struct {
    inflater stream;
    huffman literals, distances, length_code;
    uint8_t lengths[288 + 32];
    uint16_t next[16];
} inflate_work;

/* The decoder's inner steps are inlined: the shim is built with -Oz, which would call them once per
 * symbol (inlined, with the match copy below, the snapshot restore ran 2.4x faster in wasmtime). */
#define HOT static inline __attribute__((always_inline))

/* At least 56 bits in the buffer while the input lasts: eight bytes at once (the bytes beyond the whole
 * ones counted land where the next refill puts them again), byte by byte near the end. */
HOT void refill(inflater *s) {
    if (s->in_size - s->in_position >= 8) {
        uint64_t word;
        memcpy(&word, s->in + s->in_position, 8);
        s->bit_buffer |= word << s->bit_count;
        uint32_t taken = (63 - s->bit_count) >> 3;
        s->in_position += taken;
        s->bit_count += taken * 8;
        return;
    }
    while (s->bit_count <= 56 && s->in_position < s->in_size) {
        s->bit_buffer |= (uint64_t)s->in[s->in_position++] << s->bit_count;
        s->bit_count += 8;
    }
}

HOT uint32_t take_bits(inflater *s, uint32_t n) {
    if (s->bit_count < n) {
        refill(s);
        if (s->bit_count < n) trap();
    }
    uint32_t value = (uint32_t)s->bit_buffer & ((1u << n) - 1);
    s->bit_buffer >>= n;
    s->bit_count -= n;
    return value;
}

/* Traps on an over-subscribed code; an incomplete one is allowed (a single distance code). */
static void build_code(huffman *h, const uint8_t *lengths, uint32_t n, uint16_t *next) {
    memset(h->count, 0, sizeof h->count);
    for (uint32_t symbol = 0; symbol < n; symbol++) h->count[lengths[symbol]]++;
    h->count[0] = 0;
    int32_t left = 1;
    for (int length = 1; length < 16; length++) {
        left = (left << 1) - h->count[length];
        if (left < 0) trap();
    }
    next[1] = 0;
    for (int length = 1; length < 15; length++) next[length + 1] = (uint16_t)(next[length] + h->count[length]);
    for (uint32_t symbol = 0; symbol < n; symbol++) {
        if (lengths[symbol]) h->symbol[next[lengths[symbol]]++] = (uint16_t)symbol;
    }
    /* The fast table: walk the codes in canonical order (by length, then symbol), each code's bits
     * reversed, as they arrive, and every index that begins with them. */
    memset(h->fast, 0, sizeof h->fast);
    uint32_t code = 0, index = 0;
    for (uint32_t length = 1; length <= FAST_BITS; length++) {
        for (uint32_t i = 0; i < h->count[length]; i++, code++, index++) {
            uint32_t reversed = 0;
            for (uint32_t bit = 0; bit < length; bit++) reversed |= ((code >> bit) & 1) << (length - 1 - bit);
            for (uint32_t at = reversed; at < (1u << FAST_BITS); at += 1u << length) {
                h->fast[at] = (uint16_t)(length << 9 | h->symbol[index]);
            }
        }
        code <<= 1;
    }
}

/* One symbol: by the fast table, or else a bit at a time, most significant bit first. */
HOT uint32_t decode_symbol(inflater *s, const huffman *h) {
    if (s->bit_count < FAST_BITS) refill(s);
    uint32_t entry = h->fast[s->bit_buffer & ((1u << FAST_BITS) - 1)];
    if (entry && entry >> 9 <= s->bit_count) {
        s->bit_buffer >>= entry >> 9;
        s->bit_count -= entry >> 9;
        return entry & 0x1FF;
    }
    int32_t code = 0, first = 0, index = 0;
    for (int length = 1; length < 16; length++) {
        code |= (int32_t)take_bits(s, 1);
        int32_t count = h->count[length];
        if (code - first < count) return h->symbol[index + code - first];
        index += count;
        first = (first + count) << 1;
        code <<= 1;
    }
    trap();
}

/* RFC 1951's length and distance tables, computed (see the top: no static data). */
static uint32_t length_extra(uint32_t symbol) { return symbol < 8 || symbol == 28 ? 0 : (symbol - 4) >> 2; }
static uint32_t length_base(uint32_t symbol) {
    if (symbol < 8) return symbol + 3;
    if (symbol == 28) return 258;
    return ((4 + (symbol & 3)) << length_extra(symbol)) + 3;
}
static uint32_t distance_extra(uint32_t code) { return code < 4 ? 0 : (code - 2) >> 1; }
static uint32_t distance_base(uint32_t code) {
    return code < 4 ? code + 1 : ((2 + (code & 1)) << distance_extra(code)) + 1;
}
/* The order code length code lengths come in: 16, 17, 18, 0, then 8, 7, 9, 6, ... 15. */
static uint32_t length_code_order(uint32_t i) {
    if (i < 3) return 16 + i;
    if (i == 3) return 0;
    return i % 2 == 0 ? 8 + (i - 4) / 2 : 7 - (i - 5) / 2;
}

/* A match: `length` bytes from `distance` back, which may overlap what it writes (a run of one byte is
 * the common case in a snapshot's zeros), eight bytes at a time when the distance allows, and rounded up
 * to eight when `room` (the bytes from `to` to the buffer's end) allows: the bytes past the match are
 * written again by what follows. */
HOT void copy_match(uint8_t *to, const uint8_t *from, uint32_t distance, uint32_t length, uint32_t room) {
    uint32_t i = 0;
    if (distance == 1) {
        memset(to, from[0], length);
        return;
    }
    if (distance >= 8) {
        uint32_t chunked = length + 7 <= room ? length + 7 : length;
        for (; i + 8 <= chunked; i += 8) {
            uint64_t word;
            memcpy(&word, from + i, 8);
            memcpy(to + i, &word, 8);
        }
    }
    for (; i < length; i++) to[i] = from[i];
}

static void inflate_codes(inflater *s, const huffman *literals, const huffman *distances) {
    for (;;) {
        uint32_t symbol = decode_symbol(s, literals);
        if (symbol < 256) {
            if (s->out_position >= s->out_size) trap();
            s->out[s->out_position++] = (uint8_t)symbol;
        } else if (symbol == 256) {
            return;
        } else {
            symbol -= 257;
            if (symbol >= 29) trap();
            uint32_t length = length_base(symbol) + take_bits(s, length_extra(symbol));
            uint32_t code = decode_symbol(s, distances);
            if (code >= 30) trap();
            uint32_t distance = distance_base(code) + take_bits(s, distance_extra(code));
            if (distance > s->out_position || length > s->out_size - s->out_position) trap();
            uint8_t *to = s->out + s->out_position;
            const uint8_t *from = to - distance;
            copy_match(to, from, distance, length, s->out_size - s->out_position);
            s->out_position += length;
        }
    }
}

static void inflate_stored(inflater *s) {
    /* To the byte boundary: the partial byte's bits go, the whole bytes refill() read ahead go back. */
    s->in_position -= s->bit_count / 8;
    s->bit_buffer = 0;
    s->bit_count = 0;
    if (s->in_size - s->in_position < 4) trap();
    const uint8_t *at = s->in + s->in_position;
    uint32_t length = at[0] | (uint32_t)at[1] << 8, inverse = at[2] | (uint32_t)at[3] << 8;
    s->in_position += 4;
    if ((length ^ 0xFFFF) != inverse || length > s->in_size - s->in_position
        || length > s->out_size - s->out_position) trap();
    memcpy(s->out + s->out_position, s->in + s->in_position, length);
    s->in_position += length;
    s->out_position += length;
}

static void inflate_fixed(inflate_work *w) {
    uint8_t *lengths = w->lengths;
    uint32_t symbol = 0;
    for (; symbol < 144; symbol++) lengths[symbol] = 8;
    for (; symbol < 256; symbol++) lengths[symbol] = 9;
    for (; symbol < 280; symbol++) lengths[symbol] = 7;
    for (; symbol < 288; symbol++) lengths[symbol] = 8;
    build_code(&w->literals, lengths, 288, w->next);
    for (symbol = 0; symbol < 30; symbol++) lengths[symbol] = 5;
    build_code(&w->distances, lengths, 30, w->next);
    inflate_codes(&w->stream, &w->literals, &w->distances);
}

static void inflate_dynamic(inflate_work *w) {
    inflater *s = &w->stream;
    uint8_t *lengths = w->lengths;
    uint32_t literal_count = take_bits(s, 5) + 257, distance_count = take_bits(s, 5) + 1;
    uint32_t length_code_count = take_bits(s, 4) + 4;
    if (literal_count > 286 || distance_count > 30) trap();
    memset(lengths, 0, 19);
    for (uint32_t i = 0; i < length_code_count; i++) lengths[length_code_order(i)] = (uint8_t)take_bits(s, 3);
    build_code(&w->length_code, lengths, 19, w->next);
    uint32_t total = literal_count + distance_count;
    for (uint32_t i = 0; i < total;) {
        uint32_t symbol = decode_symbol(s, &w->length_code);
        if (symbol < 16) {
            lengths[i++] = (uint8_t)symbol;
            continue;
        }
        uint8_t repeated = 0;
        uint32_t times;
        if (symbol == 16) {
            if (i == 0) trap();
            repeated = lengths[i - 1];
            times = 3 + take_bits(s, 2);
        } else if (symbol == 17) {
            times = 3 + take_bits(s, 3);
        } else {
            times = 11 + take_bits(s, 7);
        }
        if (times > total - i) trap();
        memset(lengths + i, repeated, times);
        i += times;
    }
    if (lengths[256] == 0) trap();  /* no end-of-block code */
    build_code(&w->literals, lengths, literal_count, w->next);
    build_code(&w->distances, lengths + literal_count, distance_count, w->next);
    inflate_codes(s, &w->literals, &w->distances);
}

/* Inflate the raw DEFLATE stream in[0:in_size] into exactly out_size bytes of out. */
static void inflate(const uint8_t *in, uint32_t in_size, uint8_t *out, uint32_t out_size, inflate_work *w) {
    inflater *s = &w->stream;
    *s = (inflater){.in = in, .in_size = in_size, .out = out, .out_size = out_size};
    uint32_t last;
    do {
        last = take_bits(s, 1);
        switch (take_bits(s, 2)) {
        case 0: inflate_stored(s); break;
        case 1: inflate_fixed(w); break;
        case 2: inflate_dynamic(w); break;
        default: trap();
        }
    } while (!last);
    if (s->out_position != out_size) trap();
}

/* ---- the packed layout ---- */

typedef struct {
    uint32_t block_size, unpacked_size, block_count;
} packed_layout;

/* The layout from a segment's first PACKED_HEADER_SIZE bytes; traps on a header the build does not write. */
HOT void read_layout(packed_layout *layout, const uint8_t *header) {
    if (u32_at(header) != PACKED_MAGIC) trap();
    layout->block_size = u32_at(header + 4);
    layout->unpacked_size = u32_at(header + 8);
    layout->block_count = u32_at(header + 12);
    if (!layout->block_size || (uint64_t)layout->block_size * layout->block_count < layout->unpacked_size) trap();
}

/* Unpacked bytes of block `index`: the block size, the last block what is left. */
HOT uint32_t block_length(const packed_layout *layout, uint32_t index) {
    uint32_t start = index * layout->block_size;
    return layout->unpacked_size - start < layout->block_size ? layout->unpacked_size - start : layout->block_size;
}

/* ---- segment 0 ---- */

static packed_layout segment_zero;
static uint32_t *starts;        /* block_count + 1 offsets into the segment */
static uint8_t *compressed;     /* room for the largest compressed block */
static uint8_t *block;          /* the block last inflated */
static uint32_t block_index = UINT32_MAX;
static inflate_work *work;

static void *allocate(size_t size) {
    void *memory = malloc(size ? size : 1);
    if (!memory) trap();
    return memory;
}

static void open_segment(void) {
    uint8_t header[PACKED_HEADER_SIZE];
    copy_packed(header, 0, sizeof header);
    read_layout(&segment_zero, header);
    uint32_t block_count = segment_zero.block_count;
    starts = allocate(((size_t)block_count + 1) * sizeof *starts);
    copy_packed(starts, PACKED_HEADER_SIZE, (block_count + 1) * (uint32_t)sizeof *starts);
    uint32_t largest = 0;
    for (uint32_t i = 0; i < block_count; i++) {
        if (starts[i + 1] < starts[i]) trap();
        if (starts[i + 1] - starts[i] > largest) largest = starts[i + 1] - starts[i];
    }
    compressed = allocate(largest);
    block = allocate(segment_zero.block_size);
    work = allocate(sizeof *work);
}

static void load_block(uint32_t index) {
    if (index == block_index) return;
    uint32_t size = starts[index + 1] - starts[index];
    copy_packed(compressed, starts[index], size);
    block_index = UINT32_MAX;  /* a trap inside leaves no half-inflated block behind as good */
    inflate(compressed, size, block, block_length(&segment_zero, index), work);
    block_index = index;
}

void meshext_copy_from_segment(void *destination, uint32_t offset, uint32_t size) {
    if (!size) return;
    if (!starts) open_segment();
    if (offset > segment_zero.unpacked_size || size > segment_zero.unpacked_size - offset) trap();
    uint8_t *to = destination;
    while (size) {
        uint32_t index = offset / segment_zero.block_size, within = offset % segment_zero.block_size;
        load_block(index);
        uint32_t left = block_length(&segment_zero, index) - within;
        uint32_t n = left < size ? left : size;
        memcpy(to, block + within, n);
        to += n;
        offset += n;
        size -= n;
    }
}

/* ---- the deferred snapshot ---- */

/* Unpacked bytes of a snapshot block the restore takes (packed_segment.BLOCK_SIZE), and the room for one
 * block's compressed bytes (zlib's worst case on 16 KiB is a few bytes more than 16 KiB). */
#define SNAPSHOT_BLOCK_MAX (16 * 1024)
#define SNAPSHOT_COMPRESSED_MAX (SNAPSHOT_BLOCK_MAX + 1024)

/* All the restore works in: a stretch of memory the snapshot leaves zero and none of its runs covers. */
typedef struct {
    inflate_work work;
    packed_layout layout;
    uint8_t header[PACKED_HEADER_SIZE];
    uint8_t run_header[8];
    uint8_t compressed[SNAPSHOT_COMPRESSED_MAX];
    uint8_t block[SNAPSHOT_BLOCK_MAX];
} restore_area;

/* Write the deferred snapshot into memory, once, from the module's first
 * call (wasm_binary.defer_snapshot generates the caller and picks `area`).
 * Segment 1 packs, from byte `packed_at` on, the runs' stream: for each run
 * a u32 offset in memory and a u32 length, then its bytes; a length of 0
 * ends it.  The area is zeroed again at the end, as the snapshot has it. */
__attribute__((export_name("meshext_restore_snapshot")))
void meshext_restore_snapshot(restore_area *area, uint32_t area_size, uint32_t packed_at) {
    if (area_size < sizeof *area) trap();
    copy_snapshot(area->header, packed_at, PACKED_HEADER_SIZE);
    read_layout(&area->layout, area->header);
    if (area->layout.block_size > SNAPSHOT_BLOCK_MAX) trap();
    uint32_t header_bytes = 0, remaining = 0, ended = 0;
    uint8_t *destination = 0;
    for (uint32_t index = 0; index < area->layout.block_count; index++) {
        copy_snapshot(area->header, packed_at + PACKED_HEADER_SIZE + 4 * index, 8);
        uint32_t start = u32_at(area->header), end = u32_at(area->header + 4);
        if (end < start || end - start > SNAPSHOT_COMPRESSED_MAX) trap();
        copy_snapshot(area->compressed, packed_at + start, end - start);
        uint32_t length = block_length(&area->layout, index);
        inflate(area->compressed, end - start, area->block, length, &area->work);
        for (uint32_t at = 0; at < length && !ended;) {
            if (remaining) {
                uint32_t n = remaining < length - at ? remaining : length - at;
                memcpy(destination, area->block + at, n);
                destination += n;
                at += n;
                remaining -= n;
                continue;
            }
            area->run_header[header_bytes++] = area->block[at++];
            if (header_bytes == sizeof area->run_header) {
                header_bytes = 0;
                destination = (uint8_t *)(uintptr_t)u32_at(area->run_header);
                remaining = u32_at(area->run_header + 4);
                ended = !remaining;
            }
        }
    }
    if (!ended) trap();
    memset(area, 0, sizeof *area);
}
