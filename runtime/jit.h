/*
 * runtime/jit.h: compiles a device module (LLVM bitcode written by the
 * compiler) for the CPU this worker runs on and hands back its entry points.
 *
 * One ad_jit owns every LLVM object involved (context, target machine, LLJIT
 * instance) and ad_jit_destroy frees them all; addresses returned by
 * ad_jit_lookup stay valid until then. Undefined symbols of the module (the
 * ad_k_* kernels, ad_rt_* communication calls, libm) resolve to the running
 * process, so the binary must export them (ENABLE_EXPORTS + whole-archive).
 */
#ifndef AD_JIT_H
#define AD_JIT_H

#include "../common/ad.h"

typedef struct ad_jit ad_jit;

/* Loads `bitcode_path`, sets the host triple and data layout, verifies it,
 * optimizes it with the new pass manager ("default<O3>") for the host CPU and
 * its features (AVX2, AVX-512 where present) and adds it to a fresh LLJIT.
 * Blocks while optimizing. Errors (unreadable file, bad bitcode, a module that
 * fails verification) are AD_ERR_INPUT naming the file. On success *out is
 * owned by the caller (ad_jit_destroy). */
ad_status ad_jit_create(const char *bitcode_path, ad_jit **out);

/* Address of the function or global `name` of the module (this materializes
 * it: machine code is generated on the first lookup). A missing symbol, or one
 * that refers to a function the process does not export, is AD_ERR_INPUT. */
ad_status ad_jit_lookup(ad_jit *jit, const char *name, void **addr);

/* The CPU name and feature string the module was compiled for (owned by jit). */
const char *ad_jit_cpu(const ad_jit *jit);
const char *ad_jit_features(const ad_jit *jit);

/* Frees every LLVM object and the generated code. NULL is a no-op. */
void ad_jit_destroy(ad_jit *jit);

#endif
