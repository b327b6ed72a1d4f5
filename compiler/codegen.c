/*
 * compiler/codegen.c: one device program -> one LLVM module (LLVM C API).
 *
 * Fusion: an elementwise node whose single-use output feeds an elementwise node
 * of the same output shape joins that node's group; a group becomes one loop
 * nest over its output shape, with every external operand read through numpy
 * broadcast strides and intermediate results kept in registers. Operands keep
 * their own dtypes: each is loaded with its own LLVM type (a bool byte becomes
 * an i1) and ops' `emit` work on register scalars (ad_cg_type). Groups and
 * reductions are emitted as internal functions called in order from the entry
 * function; heavy ops call runtime kernels (ops' `lower`). The worker JIT
 * optimizes the module for its own CPU (O3, vectorization), so this file emits
 * plain scalar loops.
 *
 * One struct (ad_cg) owns every LLVM reference; ad_codegen frees them in one
 * place after verifying and writing the module.
 */
#include "codegen.h"

#include "codegen_module.h"
#include "memplan.h"

#include <llvm-c/Analysis.h>
#include <llvm-c/BitWriter.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct ad_cg {
  ad_program *p;
  LLVMContextRef ctx;
  LLVMModuleRef mod;
  LLVMBuilderRef b;
  LLVMTypeRef f32, i64, ptr, voidt;
  LLVMValueRef entry;         /* ad_step / ad_forward */
  LLVMValueRef mem, rt, step; /* of the function being emitted */
  LLVMValueRef *globals;      /* by value id: constant data */
  int64_t scratch_max;
  int n_funcs, n_consts;
};

LLVMContextRef ad_cg_context(ad_cg *cg) {
  return cg->ctx;
}
LLVMModuleRef ad_cg_module(ad_cg *cg) {
  return cg->mod;
}
LLVMBuilderRef ad_cg_builder(ad_cg *cg) {
  return cg->b;
}
ad_graph *ad_cg_graph(ad_cg *cg) {
  return cg->p->g;
}
LLVMTypeRef ad_cg_f32_type(ad_cg *cg) {
  return cg->f32;
}
LLVMTypeRef ad_cg_i64_type(ad_cg *cg) {
  return cg->i64;
}
LLVMTypeRef ad_cg_ptr_type(ad_cg *cg) {
  return cg->ptr;
}
LLVMValueRef ad_cg_f32(ad_cg *cg, float x) {
  return LLVMConstReal(cg->f32, x);
}
LLVMValueRef ad_cg_i64(ad_cg *cg, int64_t x) {
  return LLVMConstInt(cg->i64, (unsigned long long)x, 1);
}

/* Elementwise scalars live in registers as float (float32, and float16 and
 * bfloat16, which compute in float32 like numpy's half loops), double, i64,
 * i32, i16, i8 (signed and unsigned alike: the ops read the signedness off the
 * dtype) and i1 (bool); in memory a bool is one byte, a float16 an LLVM half
 * and a bfloat16 its 16 bits. */
LLVMTypeRef ad_cg_type(ad_cg *cg, ad_dtype t) {
  switch (t) {
  case AD_F32:
  case AD_F16:
  case AD_BF16:
    return cg->f32;
  case AD_F64:
    return LLVMDoubleTypeInContext(cg->ctx);
  case AD_I64:
  case AD_U64:
    return cg->i64;
  case AD_I32:
  case AD_U32:
    return LLVMInt32TypeInContext(cg->ctx);
  case AD_I16:
  case AD_U16:
    return LLVMInt16TypeInContext(cg->ctx);
  case AD_U8:
  case AD_I8:
    return LLVMInt8TypeInContext(cg->ctx);
  case AD_BOOL:
    return LLVMInt1TypeInContext(cg->ctx);
  default:
    AD_ASSERT(!"no elementwise register type for this dtype");
    return NULL;
  }
}

static LLVMTypeRef mem_type(ad_cg *cg, ad_dtype t) {
  switch (t) {
  case AD_BOOL:
    return LLVMInt8TypeInContext(cg->ctx);
  case AD_F16:
    return LLVMHalfTypeInContext(cg->ctx);
  case AD_BF16:
    return LLVMInt16TypeInContext(cg->ctx);
  default:
    return ad_cg_type(cg, t);
  }
}

/* A loaded element of dtype t (memory type) as its register scalar. */
static LLVMValueRef load_scalar(ad_cg *cg, ad_dtype t, LLVMValueRef v) {
  switch (t) {
  case AD_BOOL:
    return LLVMBuildICmp(cg->b, LLVMIntNE, v, LLVMConstNull(LLVMTypeOf(v)), "");
  case AD_F16:
    return LLVMBuildFPExt(cg->b, v, cg->f32, "");
  case AD_BF16: { /* the upper half of a float32 */
    LLVMValueRef w = LLVMBuildZExt(cg->b, v, LLVMInt32TypeInContext(cg->ctx), "");
    w = LLVMBuildShl(cg->b, w, LLVMConstInt(LLVMTypeOf(w), 16, 0), "");
    return LLVMBuildBitCast(cg->b, w, cg->f32, "");
  }
  default:
    return v;
  }
}

/* A register scalar of dtype t as its memory type. float32 -> float16 rounds
 * to nearest even (fptrunc); float32 -> bfloat16 too, as PyTorch and
 * onnxruntime do, and a NaN becomes the quiet NaN 0x7fc0. */
static LLVMValueRef store_scalar(ad_cg *cg, ad_dtype t, LLVMValueRef v) {
  switch (t) {
  case AD_BOOL:
    return LLVMBuildZExt(cg->b, v, LLVMInt8TypeInContext(cg->ctx), "");
  case AD_F16:
    return LLVMBuildFPTrunc(cg->b, v, LLVMHalfTypeInContext(cg->ctx), "");
  case AD_BF16: {
    LLVMTypeRef i32 = LLVMInt32TypeInContext(cg->ctx);
    LLVMValueRef bits = LLVMBuildBitCast(cg->b, v, i32, "");
    LLVMValueRef lsb = LLVMBuildAnd(cg->b, LLVMBuildLShr(cg->b, bits, LLVMConstInt(i32, 16, 0), ""),
                                    LLVMConstInt(i32, 1, 0), "");
    LLVMValueRef r =
        LLVMBuildAdd(cg->b, bits, LLVMBuildAdd(cg->b, lsb, LLVMConstInt(i32, 0x7fff, 0), ""), "");
    r = LLVMBuildLShr(cg->b, r, LLVMConstInt(i32, 16, 0), "");
    LLVMValueRef nan = LLVMBuildFCmp(cg->b, LLVMRealUNO, v, v, "");
    r = LLVMBuildSelect(cg->b, nan, LLVMConstInt(i32, 0x7fc0, 0), r, "");
    return LLVMBuildTrunc(cg->b, r, LLVMInt16TypeInContext(cg->ctx), "");
  }
  default:
    return v;
  }
}

LLVMValueRef ad_cg_const(ad_cg *cg, ad_dtype t, double x) {
  LLVMTypeRef ty = ad_cg_type(cg, t);
  if (ad_dtype_is_float(t))
    return LLVMConstReal(ty, x);
  return LLVMConstInt(ty, (unsigned long long)(int64_t)x, !ad_dtype_is_unsigned(t));
}
LLVMValueRef ad_cg_rt(ad_cg *cg) {
  return cg->rt;
}
LLVMValueRef ad_cg_step(ad_cg *cg) {
  return cg->step ? cg->step : ad_cg_i64(cg, 0);
}

LLVMValueRef ad_cg_intrinsic(ad_cg *cg, const char *name, int n_args, LLVMValueRef *args) {
  LLVMTypeRef t = LLVMTypeOf(args[0]);
  LLVMTypeRef params[4] = {t, t, t, t};
  AD_ASSERT(n_args <= 4);
  LLVMTypeRef fty = LLVMFunctionType(t, params, (unsigned)n_args, 0);
  LLVMValueRef fn = LLVMGetNamedFunction(cg->mod, name);
  if (!fn)
    fn = LLVMAddFunction(cg->mod, name, fty);
  return LLVMBuildCall2(cg->b, fty, fn, args, (unsigned)n_args, "");
}

void ad_cg_call_void(ad_cg *cg, const char *name, int n_args, LLVMValueRef *args) {
  LLVMTypeRef types[17];
  AD_ASSERT(n_args <= 17);
  for (int i = 0; i < n_args; i++)
    types[i] = LLVMTypeOf(args[i]);
  LLVMTypeRef fty = LLVMFunctionType(cg->voidt, types, (unsigned)n_args, 0);
  LLVMValueRef fn = LLVMGetNamedFunction(cg->mod, name);
  if (!fn)
    fn = LLVMAddFunction(cg->mod, name, fty);
  LLVMBuildCall2(cg->b, fty, fn, args, (unsigned)n_args, "");
}

static ad_value *alias_root(ad_value *v) {
  while (v->kind == AD_VAL_ACT && v->producer->op->lower_kind == AD_LOWER_ALIAS)
    v = v->producer->in[0];
  return v;
}

static LLVMValueRef const_global(ad_cg *cg, ad_value *v) {
  if (!cg->globals[v->id]) {
    size_t n = ad_value_bytes(v);
    LLVMValueRef init =
        v->data ? LLVMConstStringInContext(cg->ctx, v->data, (unsigned)n, 1)
                : LLVMConstNull(LLVMArrayType(LLVMInt8TypeInContext(cg->ctx), (unsigned)n));
    char name[32];
    snprintf(name, sizeof name, "c%d", cg->n_consts++);
    LLVMValueRef gv = LLVMAddGlobal(cg->mod, LLVMTypeOf(init), name);
    LLVMSetInitializer(gv, init);
    LLVMSetGlobalConstant(gv, 1);
    LLVMSetLinkage(gv, LLVMPrivateLinkage);
    LLVMSetAlignment(gv, 64);
    cg->globals[v->id] = gv;
  }
  return cg->globals[v->id];
}

LLVMValueRef ad_cg_ptr(ad_cg *cg, const ad_value *cv) {
  ad_value *v = alias_root((ad_value *)cv);
  if (v->kind == AD_VAL_CONST)
    return const_global(cg, v);
  int64_t off = cg->p->offset[v->id];
  AD_ASSERT(off >= 0);
  LLVMValueRef idx = ad_cg_i64(cg, off);
  return LLVMBuildGEP2(cg->b, LLVMInt8TypeInContext(cg->ctx), cg->mem, &idx, 1, "");
}

LLVMValueRef ad_cg_scratch(ad_cg *cg, size_t bytes) {
  if ((int64_t)bytes > cg->scratch_max)
    cg->scratch_max = (int64_t)bytes;
  LLVMValueRef idx = ad_cg_i64(cg, cg->p->scratch_offset);
  return LLVMBuildGEP2(cg->b, LLVMInt8TypeInContext(cg->ctx), cg->mem, &idx, 1, "");
}

void ad_cg_call_kernel(ad_cg *cg, const char *fn_name, const int64_t *params, int n_params,
                       LLVMValueRef *ptrs, int n_ptrs) {
  AD_ASSERT(n_ptrs <= 16);
  LLVMValueRef *vals = ad_xmalloc(sizeof(LLVMValueRef) * (size_t)(n_params ? n_params : 1));
  for (int i = 0; i < n_params; i++)
    vals[i] = ad_cg_i64(cg, params[i]);
  LLVMValueRef init = LLVMConstArray(cg->i64, vals, (unsigned)n_params);
  free(vals);
  char name[32];
  snprintf(name, sizeof name, "p%d", cg->n_consts++);
  LLVMValueRef gv = LLVMAddGlobal(cg->mod, LLVMTypeOf(init), name);
  LLVMSetInitializer(gv, init);
  LLVMSetGlobalConstant(gv, 1);
  LLVMSetLinkage(gv, LLVMPrivateLinkage);
  LLVMValueRef args[17];
  args[0] = gv;
  for (int i = 0; i < n_ptrs; i++)
    args[i + 1] = ptrs[i];
  ad_cg_call_void(cg, fn_name, n_ptrs + 1, args);
}

void ad_cg_loop(ad_cg *cg, LLVMValueRef n, ad_cg_loop_body body, void *ctx) {
  LLVMValueRef fn = LLVMGetBasicBlockParent(LLVMGetInsertBlock(cg->b));
  LLVMBasicBlockRef pre = LLVMGetInsertBlock(cg->b);
  LLVMBasicBlockRef head = LLVMAppendBasicBlockInContext(cg->ctx, fn, "loop");
  LLVMBasicBlockRef exit = LLVMAppendBasicBlockInContext(cg->ctx, fn, "done");
  LLVMValueRef nonempty = LLVMBuildICmp(cg->b, LLVMIntSGT, n, ad_cg_i64(cg, 0), "");
  LLVMBuildCondBr(cg->b, nonempty, head, exit);
  LLVMPositionBuilderAtEnd(cg->b, head);
  LLVMValueRef i = LLVMBuildPhi(cg->b, cg->i64, "i");
  body(cg, i, ctx);
  LLVMValueRef next = LLVMBuildAdd(cg->b, i, ad_cg_i64(cg, 1), "");
  LLVMBasicBlockRef latch = LLVMGetInsertBlock(cg->b);
  LLVMValueRef zero = ad_cg_i64(cg, 0);
  LLVMAddIncoming(i, &zero, &pre, 1);
  LLVMAddIncoming(i, &next, &latch, 1);
  LLVMBuildCondBr(cg->b, LLVMBuildICmp(cg->b, LLVMIntSLT, next, n, ""), head, exit);
  LLVMPositionBuilderAtEnd(cg->b, exit);
}

/* ---- loop nests with broadcast strides ---- */

#define MAX_OPS 64

typedef struct nest nest;
struct nest {
  int rank;
  int64_t dims[AD_MAX_RANK];
  int n_ops;
  LLVMValueRef base[MAX_OPS];           /* pointers */
  LLVMTypeRef ety[MAX_OPS];             /* element type in memory */
  int64_t stride[MAX_OPS][AD_MAX_RANK]; /* in elements; 0 broadcasts */
  LLVMValueRef off[MAX_OPS];            /* element offsets at the current level */
  void (*inner)(ad_cg *cg, nest *ns, void *ctx);
  void *ctx;
  int level;
};

/* Strides of value v (right-aligned) read over iteration dims. */
static void broadcast_strides(const ad_value *v, int rank, const int64_t *dims, int64_t *st) {
  int64_t s = 1;
  for (int i = rank - 1; i >= 0; i--) {
    int vi = i - (rank - v->rank);
    if (vi < 0 || (v->dims[vi] == 1 && dims[i] != 1)) {
      st[i] = 0;
    } else {
      st[i] = s;
    }
    if (vi >= 0)
      s *= v->dims[vi];
  }
}

static int nest_add(nest *ns, LLVMValueRef base, LLVMTypeRef ety, const int64_t *strides) {
  AD_ASSERT(ns->n_ops < MAX_OPS);
  ns->base[ns->n_ops] = base;
  ns->ety[ns->n_ops] = ety;
  memcpy(ns->stride[ns->n_ops], strides, sizeof(int64_t) * (size_t)ns->rank);
  return ns->n_ops++;
}

/* Merges adjacent dimensions that every operand walks contiguously, and drops
 * extents of 1, so most nests become one or two loops. */
static void nest_collapse(nest *ns) {
  int r = 0;
  for (int i = 0; i < ns->rank; i++) {
    if (ns->dims[i] == 1)
      continue;
    if (r > 0) {
      int ok = 1;
      for (int k = 0; k < ns->n_ops; k++)
        ok &= ns->stride[k][r - 1] == ns->stride[k][i] * ns->dims[i];
      if (ok) {
        ns->dims[r - 1] *= ns->dims[i];
        for (int k = 0; k < ns->n_ops; k++)
          ns->stride[k][r - 1] = ns->stride[k][i];
        continue;
      }
    }
    ns->dims[r] = ns->dims[i];
    for (int k = 0; k < ns->n_ops; k++)
      ns->stride[k][r] = ns->stride[k][i];
    r++;
  }
  ns->rank = r;
}

static void nest_level(ad_cg *cg, LLVMValueRef i, void *vns) {
  nest *ns = vns;
  int l = ns->level;
  LLVMValueRef saved[MAX_OPS];
  for (int k = 0; k < ns->n_ops; k++) {
    saved[k] = ns->off[k];
    if (ns->stride[k][l])
      ns->off[k] = LLVMBuildAdd(cg->b, ns->off[k],
                                LLVMBuildMul(cg->b, i, ad_cg_i64(cg, ns->stride[k][l]), ""), "");
  }
  if (l + 1 == ns->rank) {
    ns->inner(cg, ns, ns->ctx);
  } else {
    ns->level++;
    ad_cg_loop(cg, ad_cg_i64(cg, ns->dims[l + 1]), nest_level, ns);
    ns->level--;
  }
  for (int k = 0; k < ns->n_ops; k++)
    ns->off[k] = saved[k];
}

static void nest_emit(ad_cg *cg, nest *ns) {
  nest_collapse(ns);
  for (int k = 0; k < ns->n_ops; k++)
    ns->off[k] = ad_cg_i64(cg, 0);
  if (ns->rank == 0) {
    ns->inner(cg, ns, ns->ctx);
    return;
  }
  ns->level = 0;
  ad_cg_loop(cg, ad_cg_i64(cg, ns->dims[0]), nest_level, ns);
}

static LLVMValueRef nest_addr(ad_cg *cg, nest *ns, int k) {
  return LLVMBuildGEP2(cg->b, ns->ety[k], ns->base[k], &ns->off[k], 1, "");
}

/* ad_cg_broadcast: dst = scale * broadcast(src). */
typedef struct {
  float scale;
} bcast_ctx;

static void bcast_inner(ad_cg *cg, nest *ns, void *vctx) {
  bcast_ctx *c = vctx;
  LLVMValueRef x = LLVMBuildLoad2(cg->b, cg->f32, nest_addr(cg, ns, 1), "");
  if (c->scale != 1)
    x = LLVMBuildFMul(cg->b, x, ad_cg_f32(cg, c->scale), "");
  LLVMBuildStore(cg->b, x, nest_addr(cg, ns, 0));
}

void ad_cg_broadcast(ad_cg *cg, const ad_value *src, LLVMValueRef dst, int rank,
                     const int64_t *dims, float scale) {
  nest ns = {.rank = rank, .inner = bcast_inner};
  bcast_ctx c = {scale};
  ns.ctx = &c;
  memcpy(ns.dims, dims, sizeof(int64_t) * (size_t)rank);
  int64_t st[AD_MAX_RANK];
  ad_value dense = {.rank = rank};
  memcpy(dense.dims, dims, sizeof(int64_t) * (size_t)rank);
  broadcast_strides(&dense, rank, dims, st);
  nest_add(&ns, dst, cg->f32, st);
  broadcast_strides(src, rank, dims, st);
  nest_add(&ns, ad_cg_ptr(cg, src), cg->f32, st);
  nest_emit(cg, &ns);
}

/* ---- fusion groups ---- */

typedef struct {
  ad_program *p;
  int *group;           /* by node index: index of the group's root node */
  unsigned char *fused; /* by value id: lives only in registers */
  unsigned char *must;  /* by value id: must be in memory */
} fusion;

static int root_of(fusion *f, int k) {
  while (f->group[k] != k)
    k = f->group[k];
  return k;
}

static int same_dims(const ad_value *a, const ad_value *b) {
  return a->rank == b->rank && !memcmp(a->dims, b->dims, sizeof(int64_t) * (size_t)a->rank);
}

/* Group caps: at most MAX_GROUP members, and at most MAX_OPS - 1 member inputs
 * in all, so that every external operand fits a nest's operand table (slot 0 is
 * the output). Longer chains become several groups. */
#define MAX_GROUP 20

static void fusion_plan(fusion *f) {
  ad_program *p = f->p;
  ad_graph *g = p->g;
  ad_graph_recount(g);
  int nv = g->values.len, nn = g->nodes.len;
  f->group = ad_xmalloc(sizeof(int) * (size_t)(nn ? nn : 1));
  f->fused = ad_xcalloc((size_t)nv, 1);
  f->must = ad_xcalloc((size_t)nv, 1);
  for (int i = 0; i < p->n_params; i++)
    if (p->grads[i]) /* NULL: a sparse gradient that only moves as rows */
      f->must[p->grads[i]->id] = 1;
  if (p->loss)
    f->must[p->loss->id] = 1;
  for (int i = 0; i < g->outputs.len; i++)
    f->must[g->outputs.data[i]->id] = 1;
  int *index = ad_xmalloc(sizeof(int) * (size_t)nv);
  int *size = ad_xmalloc(sizeof(int) * (size_t)(nn ? nn : 1));  /* members, by root */
  int *n_ins = ad_xmalloc(sizeof(int) * (size_t)(nn ? nn : 1)); /* member inputs, by root */
  for (int i = 0; i < nv; i++)
    index[i] = -1;
  for (int k = 0; k < nn; k++) {
    ad_node *n = g->nodes.data[k];
    f->group[k] = k;
    size[k] = 1;
    n_ins[k] = n->n_in;
    for (int o = 0; o < n->n_out; o++)
      index[n->out[o]->id] = k;
  }
  for (int k = 0; k < nn; k++) {
    ad_node *n = g->nodes.data[k];
    if (n->op->lower_kind != AD_LOWER_EW)
      continue;
    for (int j = 0; j < n->n_in; j++) {
      ad_value *x = n->in[j];
      if (!x || x->kind != AD_VAL_ACT || x->n_uses != 1 || f->must[x->id])
        continue;
      int pk = index[x->id];
      ad_node *pn = g->nodes.data[pk];
      int rp = root_of(f, pk);
      if (pn->op->lower_kind != AD_LOWER_EW || !same_dims(x, n->out[0]) || pn->n_out != 1 ||
          size[k] + size[rp] > MAX_GROUP || n_ins[k] + n_ins[rp] > MAX_OPS - 1)
        continue;
      f->group[rp] = k;
      size[k] += size[rp];
      n_ins[k] += n_ins[rp];
      f->fused[x->id] = 1;
    }
  }
  free(size);
  free(n_ins);
  free(index);
}

typedef struct {
  ad_cg *cg;
  fusion *f;
  int root;
  int n_members;
  int members[MAX_GROUP];
  int n_ext;
  ad_value *ext[MAX_OPS]; /* external operands; op index = position + 1 (0 is the output) */
  LLVMValueRef *scalar;   /* by value id, during the inner body */
} group_ctx;

static int ext_index(group_ctx *gc, ad_value *v) {
  for (int i = 0; i < gc->n_ext; i++)
    if (gc->ext[i] == v)
      return i;
  return -1;
}

/* Loads every external operand with its own type (a bool byte becomes an i1,
 * a half a float), emits the members in order on register scalars, and stores
 * the root's. A float16 or bfloat16 member's result is rounded to its dtype
 * before the next member reads it, as if each op ran alone. */
static void group_inner(ad_cg *cg, nest *ns, void *vctx) {
  group_ctx *gc = vctx;
  ad_graph *g = gc->f->p->g;
  for (int i = 0; i < gc->n_ext; i++) {
    ad_value *x = gc->ext[i];
    LLVMValueRef v = LLVMBuildLoad2(cg->b, ns->ety[i + 1], nest_addr(cg, ns, i + 1), "");
    gc->scalar[x->id] = load_scalar(cg, x->dtype, v);
  }
  LLVMValueRef last = NULL;
  ad_value *out = NULL;
  for (int m = 0; m < gc->n_members; m++) {
    ad_node *n = g->nodes.data[gc->members[m]];
    LLVMValueRef in[MAX_OPS];
    AD_ASSERT(n->n_in <= MAX_OPS);
    for (int j = 0; j < n->n_in; j++)
      in[j] = n->in[j] ? gc->scalar[n->in[j]->id] : NULL;
    last = n->op->emit(cg, n, in);
    out = n->out[0];
    AD_ASSERT(LLVMTypeOf(last) == ad_cg_type(cg, out->dtype));
    if (out->dtype == AD_F16 || out->dtype == AD_BF16)
      last = load_scalar(cg, out->dtype, store_scalar(cg, out->dtype, last));
    gc->scalar[out->id] = last;
  }
  LLVMBuildStore(cg->b, store_scalar(cg, out->dtype, last), nest_addr(cg, ns, 0));
}

/* Starts an internal function `void kN(ptr mem)`, called from the entry now. */
static LLVMValueRef begin_func(ad_cg *cg, LLVMValueRef *saved_mem, LLVMBasicBlockRef *saved_bb) {
  char name[32];
  snprintf(name, sizeof name, "k%d", cg->n_funcs++);
  LLVMTypeRef pt[1] = {cg->ptr};
  LLVMTypeRef fty = LLVMFunctionType(cg->voidt, pt, 1, 0);
  LLVMValueRef fn = LLVMAddFunction(cg->mod, name, fty);
  LLVMSetLinkage(fn, LLVMInternalLinkage);
  LLVMValueRef arg = cg->mem;
  LLVMBuildCall2(cg->b, fty, fn, &arg, 1, "");
  *saved_bb = LLVMGetInsertBlock(cg->b);
  *saved_mem = cg->mem;
  cg->mem = LLVMGetParam(fn, 0);
  LLVMSetValueName2(cg->mem, "mem", 3);
  LLVMPositionBuilderAtEnd(cg->b, LLVMAppendBasicBlockInContext(cg->ctx, fn, "entry"));
  return fn;
}

static void end_func(ad_cg *cg, LLVMValueRef saved_mem, LLVMBasicBlockRef saved_bb) {
  LLVMBuildRetVoid(cg->b);
  cg->mem = saved_mem;
  LLVMPositionBuilderAtEnd(cg->b, saved_bb);
}

static ad_status emit_group(ad_cg *cg, fusion *f, int root) {
  ad_graph *g = f->p->g;
  group_ctx gc = {.cg = cg, .f = f, .root = root};
  for (int k = 0; k <= root; k++)
    if (root_of(f, k) == root) {
      AD_ASSERT(gc.n_members < MAX_GROUP);
      gc.members[gc.n_members++] = k;
    }
  ad_node *rn = g->nodes.data[root];
  ad_value *out = rn->out[0];
  for (int m = 0; m < gc.n_members; m++) {
    ad_node *n = g->nodes.data[gc.members[m]];
    for (int j = 0; j < n->n_in; j++) {
      ad_value *x = n->in[j];
      if (!x || f->fused[x->id] || ext_index(&gc, x) >= 0)
        continue;
      AD_ASSERT(gc.n_ext < MAX_OPS - 1);
      gc.ext[gc.n_ext++] = x;
    }
  }
  LLVMValueRef saved_mem;
  LLVMBasicBlockRef saved_bb;
  begin_func(cg, &saved_mem, &saved_bb);
  nest ns = {.rank = out->rank, .inner = group_inner, .ctx = &gc};
  memcpy(ns.dims, out->dims, sizeof(int64_t) * (size_t)out->rank);
  int64_t st[AD_MAX_RANK];
  broadcast_strides(out, out->rank, out->dims, st);
  nest_add(&ns, ad_cg_ptr(cg, out), mem_type(cg, out->dtype), st);
  for (int i = 0; i < gc.n_ext; i++) {
    broadcast_strides(gc.ext[i], out->rank, out->dims, st);
    nest_add(&ns, ad_cg_ptr(cg, gc.ext[i]), mem_type(cg, gc.ext[i]->dtype), st);
  }
  gc.scalar = ad_xcalloc((size_t)g->values.len, sizeof(LLVMValueRef));
  nest_emit(cg, &ns);
  free(gc.scalar);
  end_func(cg, saved_mem, saved_bb);
  return AD_OK;
}

/* ReduceSumTo: zero the output, then out[broadcast index] += in over in's shape. */
static void reduce_inner(ad_cg *cg, nest *ns, void *ctx) {
  LLVMValueRef oa = nest_addr(cg, ns, 0);
  LLVMValueRef x = LLVMBuildLoad2(cg->b, cg->f32, nest_addr(cg, ns, 1), "");
  LLVMValueRef acc = LLVMBuildLoad2(cg->b, cg->f32, oa, "");
  LLVMBuildStore(cg->b, LLVMBuildFAdd(cg->b, acc, x, ""), oa);
}

/* Inner axis reduced and contiguous: one kernel call per output element. */
static void reduce_row_inner(ad_cg *cg, nest *ns, void *ctx) {
  int64_t *row = ctx;
  LLVMValueRef ptrs[2] = {nest_addr(cg, ns, 1), nest_addr(cg, ns, 0)};
  ad_cg_call_kernel(cg, "ad_k_sum_row", row, 1, ptrs, 2);
}

static void emit_reduce(ad_cg *cg, const ad_node *n) {
  ad_value *x = n->in[0], *y = n->out[0];
  LLVMValueRef saved_mem;
  LLVMBasicBlockRef saved_bb;
  begin_func(cg, &saved_mem, &saved_bb);
  LLVMValueRef yp = ad_cg_ptr(cg, y);
  LLVMBuildMemSet(cg->b, yp, LLVMConstInt(LLVMInt8TypeInContext(cg->ctx), 0, 0),
                  ad_cg_i64(cg, (int64_t)ad_value_bytes(y)), 4);
  nest ns = {.rank = x->rank, .inner = reduce_inner};
  memcpy(ns.dims, x->dims, sizeof(int64_t) * (size_t)x->rank);
  int64_t st[AD_MAX_RANK];
  broadcast_strides(y, x->rank, x->dims, st);
  nest_add(&ns, yp, cg->f32, st);
  broadcast_strides(x, x->rank, x->dims, st);
  nest_add(&ns, ad_cg_ptr(cg, x), cg->f32, st);
  nest_collapse(&ns);
  int64_t row = 0;
  int last = ns.rank - 1;
  if (last >= 0 && ns.stride[0][last] == 0 && ns.stride[1][last] == 1 && ns.dims[last] >= 16) {
    row = ns.dims[last];
    ns.rank--;
    ns.inner = reduce_row_inner;
    ns.ctx = &row;
  }
  nest_emit(cg, &ns);
  end_func(cg, saved_mem, saved_bb);
}

static ad_status emit_nodes(ad_cg *cg, fusion *f) {
  ad_graph *g = f->p->g;
  for (int k = 0; k < g->nodes.len; k++) {
    ad_node *n = g->nodes.data[k];
    switch (n->op->lower_kind) {
    case AD_LOWER_EW:
      if (root_of(f, k) == k)
        AD_TRY(emit_group(cg, f, k));
      break;
    case AD_LOWER_REDUCE_SUM:
      emit_reduce(cg, n);
      break;
    case AD_LOWER_ALIAS:
      /* Only out[0] is a view of in[0]; an alias has no second output that
       * is read (a Dropout whose mask is used is not an alias: ops/random.c). */
      for (int i = 1; i < n->n_out; i++)
        if (n->out[i]->n_uses > 0)
          return ad_fail(AD_ERR_INPUT, "%s: error: output '%s' is used, which is not supported",
                         ad_node_where(g, n), n->out[i]->name);
      break;
    case AD_LOWER_CALL:
      AD_TRY(n->op->lower(cg, n));
      break;
    default:
      return ad_fail(AD_ERR_INPUT, "%s: error: op must be folded at compile time but was not",
                     ad_node_where(g, n));
    }
  }
  return AD_OK;
}

ad_status ad_codegen(ad_program *p, const char *bc_path) {
  ad_graph *g = p->g;
  fusion f = {.p = p};
  fusion_plan(&f);
  int *emit_pos = ad_xmalloc(sizeof(int) * (size_t)(g->nodes.len ? g->nodes.len : 1));
  for (int k = 0; k < g->nodes.len; k++)
    emit_pos[k] = root_of(&f, k);
  ad_memplan(p, f.fused, emit_pos, 0);
  free(emit_pos);

  ad_cg cg = {.p = p};
  cg.ctx = LLVMContextCreate();
  cg.mod = LLVMModuleCreateWithNameInContext("autodist", cg.ctx);
  cg.b = LLVMCreateBuilderInContext(cg.ctx);
  cg.f32 = LLVMFloatTypeInContext(cg.ctx);
  cg.i64 = LLVMInt64TypeInContext(cg.ctx);
  cg.ptr = LLVMPointerTypeInContext(cg.ctx, 0);
  cg.voidt = LLVMVoidTypeInContext(cg.ctx);
  cg.globals = ad_xcalloc((size_t)g->values.len, sizeof(LLVMValueRef));
  LLVMTypeRef params[3] = {cg.ptr, cg.ptr, cg.i64};
  LLVMTypeRef fty = LLVMFunctionType(cg.voidt, params, p->training ? 3 : 2, 0);
  cg.entry = LLVMAddFunction(cg.mod, p->training ? "ad_step" : "ad_forward", fty);
  cg.mem = LLVMGetParam(cg.entry, 0);
  cg.rt = LLVMGetParam(cg.entry, 1);
  cg.step = p->training ? LLVMGetParam(cg.entry, 2) : NULL;
  LLVMPositionBuilderAtEnd(cg.b, LLVMAppendBasicBlockInContext(cg.ctx, cg.entry, "entry"));

  ad_status st = emit_nodes(&cg, &f);
  if (st == AD_OK) {
    LLVMBuildRetVoid(cg.b);
    char *err = NULL;
    if (LLVMVerifyModule(cg.mod, LLVMReturnStatusAction, &err)) {
      fprintf(stderr, "autodist: internal error: invalid module:\n%s\n", err);
      AD_ASSERT(!"module verification failed");
    }
    LLVMDisposeMessage(err);
    p->mem_bytes = p->scratch_offset + ((cg.scratch_max + 63) / 64) * 64;
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", bc_path, (int)getpid());
    if (LLVMWriteBitcodeToFile(cg.mod, tmp) != 0 || rename(tmp, bc_path) != 0) {
      unlink(tmp);
      st = ad_fail(AD_ERR_INPUT, "%s: error: cannot write bitcode", bc_path);
    }
  }
  free(cg.globals);
  free(f.group);
  free(f.fused);
  free(f.must);
  LLVMDisposeBuilder(cg.b);
  LLVMDisposeModule(cg.mod);
  LLVMContextDispose(cg.ctx);
  return st;
}
