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

/* The context filter code now runs for, when Python makes it effective (a callout's answer). */
void meshext_effective_context(uint32_t context_id);

/* The filter resumed `direction` (a PROXY_STREAM_*) of the current context itself. */
void meshext_stream_continued(uint32_t direction);

/* Continue every direction of a per-stream context that its last callbacks
   paused and nothing resumed: a callout's callback failed open. */
void meshext_resume_paused(uint32_t context_id);

#endif
