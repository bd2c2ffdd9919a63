/*
 * Reads of passive data segment 0, for tests/sdk/test_sdk_packed_segment.py:
 * linked with sdk/shim/segment.c alone, the test packs a segment into the
 * module and reads slices of it through the shim's reader.
 */
#include <stdint.h>
#include <stdlib.h>

#include "segment.h"

__attribute__((export_name("allocate"))) void *allocate(uint32_t size) { return malloc(size ? size : 1); }

__attribute__((export_name("read"))) void read(void *destination, uint32_t offset, uint32_t size) {
    meshext_copy_from_segment(destination, offset, size);
}
