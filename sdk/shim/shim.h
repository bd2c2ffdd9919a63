/*
 * What shim.c (the Proxy-Wasm callbacks and their context table) offers the
 * rest of the shim.
 */
#ifndef MESHEXT_SHIM_H
#define MESHEXT_SHIM_H

#include <stdint.h>

/* Call none of a per-stream context's filter code again: it raised, and its
   state is whatever the failing code left (meshext.sdk._dispatch.handle_error).
   Roots and unknown ids are ignored. */
void meshext_stop_calls(uint32_t context_id);

#endif
