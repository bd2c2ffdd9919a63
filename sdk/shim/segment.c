/*
 * Reads of passive data segment 0, which the build packs in blocks of
 * DEFLATE (sdk/builder/packed_segment.py documents the layout):
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
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "segment.h"

#define PACKED_HEADER_SIZE 16

static _Noreturn void trap(void) { __builtin_trap(); }

/* memory.init from data segment 0 (the segment index is an immediate; clang
 * has no builtin for it any more, and only this function needs bulk memory). */
__attribute__((target("bulk-memory")))
static void copy_packed(void *destination, uint32_t offset, uint32_t size) {
    __asm__ volatile("local.get %0\n\tlocal.get %1\n\tlocal.get %2\n\tmemory.init 0, 0"
                     :: "r"(destination), "r"(offset), "r"(size) : "memory");
}

/* ---- DEFLATE ---- */

typedef struct {
    const uint8_t *in;
    uint32_t in_size, in_position;
    uint32_t bit_buffer, bit_count;
    uint8_t *out;
    uint32_t out_size, out_position;
} inflater;

/* Codes up to this many bits decode with one table lookup; longer ones (rare:
 * zlib's codes are mostly shorter) a bit at a time. */
#define FAST_BITS 9

/* A canonical Huffman code: how many codes of each length, the symbols in
 * code order (288 is the largest alphabet: literals and lengths), and for
 * each FAST_BITS bits as they arrive, (code length << 9 | symbol) of the
 * code they begin with, 0 when that code is longer. */
typedef struct {
    uint16_t count[16];
    uint16_t symbol[288];
    uint16_t fast[1 << FAST_BITS];
} huffman;

static void refill(inflater *s) {
    while (s->bit_count <= 24 && s->in_position < s->in_size) {
        s->bit_buffer |= (uint32_t)s->in[s->in_position++] << s->bit_count;
        s->bit_count += 8;
    }
}

static uint32_t take_bits(inflater *s, uint32_t n) {
    if (s->bit_count < n) {
        refill(s);
        if (s->bit_count < n) trap();
    }
    uint32_t value = s->bit_buffer & ((1u << n) - 1);
    s->bit_buffer >>= n;
    s->bit_count -= n;
    return value;
}

/* Traps on an over-subscribed code; an incomplete one is allowed (a single distance code). */
static void build_code(huffman *h, const uint8_t *lengths, uint32_t n) {
    uint16_t next[16];
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
static uint32_t decode_symbol(inflater *s, const huffman *h) {
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

static const uint16_t length_base[29] = {3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31,
                                         35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258};
static const uint8_t length_extra[29] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2,
                                         3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0};
static const uint16_t distance_base[30] = {1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129,
                                           193, 257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097,
                                           6145, 8193, 12289, 16385, 24577};
static const uint8_t distance_extra[30] = {0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6,
                                           7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13};

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
            uint32_t length = length_base[symbol] + take_bits(s, length_extra[symbol]);
            uint32_t code = decode_symbol(s, distances);
            if (code >= 30) trap();
            uint32_t distance = distance_base[code] + take_bits(s, distance_extra[code]);
            if (distance > s->out_position || length > s->out_size - s->out_position) trap();
            uint8_t *to = s->out + s->out_position;
            const uint8_t *from = to - distance;
            if (distance >= length) {
                memcpy(to, from, length);
            } else {  /* byte by byte: the match repeats bytes it writes itself */
                for (uint32_t i = 0; i < length; i++) to[i] = from[i];
            }
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

static huffman literal_code, distance_code;

static void inflate_fixed(inflater *s) {
    uint8_t lengths[288];
    uint32_t symbol = 0;
    for (; symbol < 144; symbol++) lengths[symbol] = 8;
    for (; symbol < 256; symbol++) lengths[symbol] = 9;
    for (; symbol < 280; symbol++) lengths[symbol] = 7;
    for (; symbol < 288; symbol++) lengths[symbol] = 8;
    build_code(&literal_code, lengths, 288);
    for (symbol = 0; symbol < 30; symbol++) lengths[symbol] = 5;
    build_code(&distance_code, lengths, 30);
    inflate_codes(s, &literal_code, &distance_code);
}

static void inflate_dynamic(inflater *s) {
    static const uint8_t order[19] = {16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15};
    uint8_t lengths[288 + 32];
    uint32_t literal_count = take_bits(s, 5) + 257, distance_count = take_bits(s, 5) + 1;
    uint32_t length_code_count = take_bits(s, 4) + 4;
    if (literal_count > 286 || distance_count > 30) trap();
    memset(lengths, 0, 19);
    for (uint32_t i = 0; i < length_code_count; i++) lengths[order[i]] = (uint8_t)take_bits(s, 3);
    huffman length_code;
    build_code(&length_code, lengths, 19);
    uint32_t total = literal_count + distance_count;
    for (uint32_t i = 0; i < total;) {
        uint32_t symbol = decode_symbol(s, &length_code);
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
    build_code(&literal_code, lengths, literal_count);
    build_code(&distance_code, lengths + literal_count, distance_count);
    inflate_codes(s, &literal_code, &distance_code);
}

/* Inflate the raw DEFLATE stream in[0:in_size] into exactly out_size bytes of out. */
static void inflate(const uint8_t *in, uint32_t in_size, uint8_t *out, uint32_t out_size) {
    inflater s = {.in = in, .in_size = in_size, .out = out, .out_size = out_size};
    uint32_t last;
    do {
        last = take_bits(&s, 1);
        switch (take_bits(&s, 2)) {
        case 0: inflate_stored(&s); break;
        case 1: inflate_fixed(&s); break;
        case 2: inflate_dynamic(&s); break;
        default: trap();
        }
    } while (!last);
    if (s.out_position != out_size) trap();
}

/* ---- the packed segment ---- */

static uint32_t block_size, unpacked_size, block_count;
static uint32_t *starts;        /* block_count + 1 offsets into the segment */
static uint8_t *compressed;     /* room for the largest compressed block */
static uint8_t *block;          /* the block last inflated */
static uint32_t block_index = UINT32_MAX;

static void *allocate(size_t size) {
    void *memory = malloc(size ? size : 1);
    if (!memory) trap();
    return memory;
}

static void open_segment(void) {
    uint8_t header[PACKED_HEADER_SIZE];
    copy_packed(header, 0, sizeof header);
    if (memcmp(header, "MXZ1", 4) != 0) trap();
    memcpy(&block_size, header + 4, 4);
    memcpy(&unpacked_size, header + 8, 4);
    memcpy(&block_count, header + 12, 4);
    if (!block_size || (uint64_t)block_size * block_count < unpacked_size) trap();
    starts = allocate(((size_t)block_count + 1) * sizeof *starts);
    copy_packed(starts, PACKED_HEADER_SIZE, (block_count + 1) * (uint32_t)sizeof *starts);
    uint32_t largest = 0;
    for (uint32_t i = 0; i < block_count; i++) {
        if (starts[i + 1] < starts[i]) trap();
        if (starts[i + 1] - starts[i] > largest) largest = starts[i + 1] - starts[i];
    }
    compressed = allocate(largest);
    block = allocate(block_size);
}

static void load_block(uint32_t index) {
    if (index == block_index) return;
    uint32_t size = starts[index + 1] - starts[index];
    copy_packed(compressed, starts[index], size);
    uint32_t start = index * block_size;
    uint32_t length = unpacked_size - start < block_size ? unpacked_size - start : block_size;
    block_index = UINT32_MAX;  /* a trap inside leaves no half-inflated block behind as good */
    inflate(compressed, size, block, length);
    block_index = index;
}

void meshext_copy_from_segment(void *destination, uint32_t offset, uint32_t size) {
    if (!size) return;
    if (!starts) open_segment();
    if (offset > unpacked_size || size > unpacked_size - offset) trap();
    uint8_t *to = destination;
    while (size) {
        uint32_t index = offset / block_size, within = offset % block_size;
        load_block(index);
        uint32_t block_end = index + 1 == block_count ? unpacked_size - index * block_size : block_size;
        uint32_t n = block_end - within < size ? block_end - within : size;
        memcpy(to, block + within, n);
        to += n;
        offset += n;
        size -= n;
    }
}
