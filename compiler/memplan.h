/*
 * compiler/memplan.h: byte offsets of every value in the device arena.
 */
#ifndef AD_MEMPLAN_H
#define AD_MEMPLAN_H

#include "program.h"

/*
 * Fills p->offset, p->scratch_offset and p->mem_bytes. Persistent values come
 * first (trainable parameters in availability order, frozen ones, optimizer
 * state, gradients bucket by bucket and contiguous, data inputs, the loss and
 * graph outputs); the other activations share a workspace by liveness.
 * `fused[v]` marks values that live only in registers (fusion decided by
 * codegen before planning); `emit_pos[node]` is where a node's code runs (the
 * position of its fusion group). Aliases (Reshape, Flatten, ...) share the
 * offset of what they view. `scratch_bytes` is the largest per-node scratch.
 */
void ad_memplan(ad_program *p, const unsigned char *fused, const int *emit_pos,
                int64_t scratch_bytes);

#endif
