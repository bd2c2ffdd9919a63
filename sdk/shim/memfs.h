/*
 * The module's read-only in-memory file system (memfs.c): what the rest of
 * the shim calls.
 */
#ifndef MESHEXT_MEMFS_H
#define MESHEXT_MEMFS_H

#include <stdint.h>

/* Build time, before the interpreter starts: serve files from the image at `data`. */
void meshext_memfs_mount(uint8_t *data, uint32_t size);

/* Build time: drop the bytes of a file nothing reads again; 0 if it was a file of the image. */
int meshext_memfs_forget(const char *path, uint32_t length);

#endif
