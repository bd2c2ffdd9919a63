/*
 * Reads of the module's passive data segment 0 (segment.c): the file data
 * memfs.c serves and the cold code interp.c runs.
 */
#ifndef MESHEXT_SEGMENT_H
#define MESHEXT_SEGMENT_H

#include <stdint.h>

/* Copy `size` bytes of segment 0 as the build laid them out, from `offset`
 * on (the segment is carried packed; this unpacks what the range covers);
 * traps when the range is outside it. */
void meshext_copy_from_segment(void *destination, uint32_t offset, uint32_t size);

#endif
