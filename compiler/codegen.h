/*
 * compiler/codegen.h: turns one device's scheduled graph into an LLVM module
 * through the LLVM C API (c3c's rule: one context struct owns every LLVM
 * reference and frees them in one place; every module is verified).
 *
 * The module exports one function per entry point:
 *     void ad_step(char *mem, void *rt, int64_t step);     training step
 *     void ad_forward(char *mem, void *rt);                inference
 * `mem` is the device's arena: every non-constant value lives at the byte
 * offset the memory plan (memplan.h) gave it. Constants are module globals.
 * `rt` is the runtime handle passed through to communication calls. `step` is
 * the 1-based step number (Adam's bias correction).
 *
 * Ops use the helpers below from their `emit` (EW) or `lower` (CALL) functions.
 */
#ifndef AD_CODEGEN_H
#define AD_CODEGEN_H

#include "op.h"

#include <llvm-c/Core.h>

LLVMContextRef ad_cg_context(ad_cg *cg);
LLVMModuleRef ad_cg_module(ad_cg *cg);
LLVMBuilderRef ad_cg_builder(ad_cg *cg);
ad_graph *ad_cg_graph(ad_cg *cg);

LLVMTypeRef ad_cg_f32_type(ad_cg *cg);
LLVMTypeRef ad_cg_i64_type(ad_cg *cg);
LLVMTypeRef ad_cg_ptr_type(ad_cg *cg);
LLVMValueRef ad_cg_f32(ad_cg *cg, float x);
LLVMValueRef ad_cg_i64(ad_cg *cg, int64_t x);
/* Register type of an elementwise scalar of dtype t: float, i64, i32, i8 for
 * uint8, i1 for bool (stored as one byte in memory). EW `emit` functions get
 * their inputs in these types and return their output's. */
LLVMTypeRef ad_cg_type(ad_cg *cg, ad_dtype t);
/* Constant x in dtype t's register type (integers truncate toward zero). */
LLVMValueRef ad_cg_const(ad_cg *cg, ad_dtype t, double x);

/* Calls an LLVM float intrinsic of one or two f32 arguments, e.g. "llvm.exp.f32",
 * "llvm.maxnum.f32". */
LLVMValueRef ad_cg_intrinsic(ad_cg *cg, const char *name, int n_args, LLVMValueRef *args);

/* Calls `void name(args...)` (declaring it on first use with the types of the
 * args): the runtime's C ABI, e.g. ad_rt_allreduce_wait(rt, bucket). */
void ad_cg_call_void(ad_cg *cg, const char *name, int n_args, LLVMValueRef *args);

/* Address (ptr) of a value's first element: mem + offset, or the constant global. */
LLVMValueRef ad_cg_ptr(ad_cg *cg, const ad_value *v);
/* Address of the runtime handle `rt` and of the step number (i64), for comm and
 * optimizer lowering. */
LLVMValueRef ad_cg_rt(ad_cg *cg);
LLVMValueRef ad_cg_step(ad_cg *cg);
/* Scratch memory of `bytes` usable only within the current node's code. */
LLVMValueRef ad_cg_scratch(ad_cg *cg, size_t bytes);

/*
 * Emits `void fn(const int64_t *p, ptr a0, ptr a1, ...)`: a call to a runtime
 * kernel (runtime/kernels.h) with its integer parameters in a constant global
 * array and its buffers as pointers. Declares fn on first use.
 */
void ad_cg_call_kernel(ad_cg *cg, const char *fn, const int64_t *params, int n_params,
                       LLVMValueRef *ptrs, int n_ptrs);

/* Emits code writing `scale * src` broadcast (numpy rules) to a dense buffer of
 * shape (rank, dims) at dst. Used e.g. by Gemm to seed Y with beta * C. */
void ad_cg_broadcast(ad_cg *cg, const ad_value *src, LLVMValueRef dst, int rank,
                     const int64_t *dims, float scale);

/* Emits a loop `for (i = 0; i < n; i++) body(i)` and leaves the builder after it.
 * `body` is called with the builder positioned inside the loop. */
typedef void (*ad_cg_loop_body)(ad_cg *cg, LLVMValueRef i, void *ctx);
void ad_cg_loop(ad_cg *cg, LLVMValueRef n, ad_cg_loop_body body, void *ctx);

#endif
