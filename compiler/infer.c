/*
 * compiler/infer.c: `autodist infer MODEL.onnx --data NAME=FILE.npy...
 * --out NAME=FILE.npy...`: single-device inference without a plan folder. The
 * model is compiled for a chunk of the data (at most 256 samples along the
 * batch axis, the symbolic dim 0 of its inputs), JIT-compiled in this process
 * and run chunk by chunk; the last chunk is padded by repeating its last row
 * and the padding is dropped. A model without a batch axis runs once on data
 * of exactly its declared shapes.
 */
#include "../cli/commands.h"
#include "../runtime/jit.h"
#include "../runtime/npy.h"
#include "codegen_module.h"
#include "onnx_load.h"
#include "op.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char infer_usage[] =
    "usage: autodist infer MODEL.onnx --data NAME=FILE.npy... --out NAME=FILE.npy...\n"
    "  --data  feeds input NAME; data for an input that the model reads as a constant\n"
    "          (a Reshape's shape, a Slice's starts, ...) is bound at compile time\n";

#define MAX_IO 32

typedef struct {
  const char *name, *file;
} binding;

/* Loads the model for `batch` with the data of constant-only inputs bound. */
static ad_status load_model(const char *model, int64_t batch, int n_bind, ad_onnx_binding *bind,
                            ad_graph **g) {
  char *bytes;
  size_t len;
  AD_TRY(ad_file_read(model, &bytes, &len));
  for (int i = 0; i < n_bind; i++)
    bind[i].bound = 0;
  ad_status st = ad_onnx_load_bound(model, bytes, len, batch, n_bind, bind, g);
  free(bytes);
  return st;
}

static ad_status parse_binding(const char *flag, const char *arg, binding *b) {
  const char *eq = arg ? strchr(arg, '=') : NULL;
  if (!eq || eq == arg || !eq[1])
    return ad_fail(AD_ERR_INPUT, "error: %s needs NAME=FILE.npy, got '%s'\n%s", flag,
                   arg ? arg : "", infer_usage);
  b->name = strndup(arg, (size_t)(eq - arg));
  b->file = eq + 1;
  return AD_OK;
}

ad_status ad_cmd_infer(int argc, char **argv) {
  const char *model = NULL;
  binding data[MAX_IO], outs[MAX_IO];
  int n_data = 0, n_out = 0;
  ad_status st = AD_OK;
  for (int i = 1; i < argc && st == AD_OK; i++) {
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      fputs(infer_usage, stdout);
      exit(0);
    } else if (!strcmp(argv[i], "--data") || !strcmp(argv[i], "--out")) {
      int is_data = argv[i][2] == 'd';
      if ((is_data ? n_data : n_out) == MAX_IO)
        st = ad_fail(AD_ERR_INPUT, "error: too many %s arguments", argv[i]);
      else
        st = parse_binding(argv[i], i + 1 < argc ? argv[i + 1] : NULL,
                           is_data ? &data[n_data++] : &outs[n_out++]);
      i++;
    } else if (argv[i][0] == '-') {
      st = ad_fail(AD_ERR_INPUT, "error: unknown option '%s'\n%s", argv[i], infer_usage);
    } else if (!model) {
      model = argv[i];
    } else {
      st = ad_fail(AD_ERR_INPUT, "error: unexpected argument '%s'\n%s", argv[i], infer_usage);
    }
  }
  /* --data may be left out only by a model without inputs (checked below). */
  if (st == AD_OK && (!model || !n_out))
    st = ad_fail(AD_ERR_INPUT, "error: infer needs a model and --out\n%s", infer_usage);

  ad_npy arrays[MAX_IO];
  memset(arrays, 0, sizeof arrays);
  for (int i = 0; i < n_data && st == AD_OK; i++)
    st = ad_npy_load(data[i].file, &arrays[i]);

  /* Which inputs have a batch axis (a symbolic dim 0) decides how the data is
   * split: a first load at batch 1 tells, then the model is loaded again for
   * the chunk size. Inputs without a batch axis must match exactly. */
  ad_onnx_binding bind[MAX_IO];
  memset(bind, 0, sizeof bind);
  for (int i = 0; i < n_data && st == AD_OK; i++) {
    bind[i].name = data[i].name;
    bind[i].file = data[i].file;
    bind[i].array = &arrays[i];
  }
  ad_graph *g = NULL;
  ad_program *p = NULL;
  ad_jit *jit = NULL;
  char *mem = NULL;
  ad_value *in_vals[MAX_IO] = {0}, *out_vals[MAX_IO] = {0};
  void **out_data = ad_xcalloc(MAX_IO, sizeof(void *));
  int64_t N = 1, chunk = 1;
  if (st == AD_OK)
    st = load_model(model, 1, n_data, bind, &g);
  for (int i = 0; i < n_data && st == AD_OK; i++) {
    if (bind[i].bound)
      continue;
    for (int k = 0; k < g->inputs.len; k++)
      if (!strcmp(g->inputs.data[k]->name, data[i].name))
        in_vals[i] = g->inputs.data[k];
    if (!in_vals[i])
      st = ad_fail(AD_ERR_INPUT, "error: --data %s: %s has no input named '%s'", data[i].name,
                   model, data[i].name);
  }
  int first_batched = -1;
  for (int i = 0; i < n_data && st == AD_OK; i++) {
    if (bind[i].bound || !in_vals[i]->batched)
      continue;
    if (arrays[i].rank < 1)
      st = ad_fail(AD_ERR_INPUT, "%s: error: input '%s' needs a batch axis, got a scalar",
                   data[i].file, data[i].name);
    else if (first_batched >= 0 && arrays[i].dims[0] != N)
      st = ad_fail(AD_ERR_INPUT, "%s: error: has %lld samples but %s has %lld", data[i].file,
                   (long long)arrays[i].dims[0], data[first_batched].file, (long long)N);
    else if (arrays[i].dims[0] == 0)
      st = ad_fail(AD_ERR_INPUT, "%s: error: has no samples", data[i].file);
    else if (first_batched < 0) {
      first_batched = i;
      N = arrays[i].dims[0];
    }
  }
  if (st == AD_OK && first_batched >= 0) {
    chunk = N > 256 ? 256 : N;
    ad_graph_destroy(g);
    g = NULL;
    memset(in_vals, 0, sizeof in_vals);
    st = load_model(model, chunk, n_data, bind, &g);
    for (int i = 0; i < n_data && st == AD_OK; i++)
      for (int k = 0; k < g->inputs.len; k++)
        if (!strcmp(g->inputs.data[k]->name, data[i].name))
          in_vals[i] = g->inputs.data[k];
  }
  for (int i = 0; i < n_data && st == AD_OK; i++) {
    ad_value *v = in_vals[i];
    if (bind[i].bound)
      continue;
    st = ad_npy_fit(data[i].file, &arrays[i], ad_dtype_name(v->dtype));
    if (st != AD_OK)
      break;
    int ok = arrays[i].rank == v->rank && !strcmp(arrays[i].dtype, ad_dtype_name(v->dtype));
    for (int d = v->batched ? 1 : 0; ok && d < v->rank; d++)
      ok = arrays[i].dims[d] == v->dims[d];
    if (!ok) {
      int64_t want[AD_MAX_RANK];
      memcpy(want, v->dims, sizeof want);
      if (v->batched)
        want[0] = N;
      st = ad_fail(AD_ERR_INPUT, "%s: error: %s %s does not fit input '%s' (%s %s)", data[i].file,
                   arrays[i].dtype, ad_shape_str(arrays[i].rank, arrays[i].dims), v->name,
                   ad_dtype_name(v->dtype), ad_shape_str(v->rank, want));
    }
  }
  for (int k = 0; k < (g ? g->inputs.len : 0) && st == AD_OK; k++) {
    int given = 0;
    for (int i = 0; i < n_data; i++)
      given |= in_vals[i] == g->inputs.data[k];
    if (!given)
      st = ad_fail(AD_ERR_INPUT, "error: %s needs input '%s': give it with --data %s=FILE.npy",
                   model, g->inputs.data[k]->name, g->inputs.data[k]->name);
  }
  int64_t n_chunks = (N + chunk - 1) / chunk;
  for (int i = 0; i < n_out && st == AD_OK; i++) {
    for (int k = 0; k < g->outputs.len; k++)
      if (!strcmp(g->outputs.data[k]->name, outs[i].name))
        out_vals[i] = g->outputs.data[k];
    if (!out_vals[i])
      st = ad_fail(AD_ERR_INPUT, "error: --out %s: %s has no output named '%s'", outs[i].name,
                   model, outs[i].name);
    else if (n_chunks > 1 && (out_vals[i]->rank < 1 || out_vals[i]->dims[0] != chunk))
      st = ad_fail(AD_ERR_INPUT,
                   "error: --out %s: output %s has no batch axis, so %lld samples cannot be "
                   "run in chunks of %lld",
                   outs[i].name, ad_shape_str(out_vals[i]->rank, out_vals[i]->dims), (long long)N,
                   (long long)chunk);
  }
  char bc[64];
  snprintf(bc, sizeof bc, "/tmp/autodist-infer-%d.bc", (int)getpid());
  if (st == AD_OK) {
    p = ad_program_create(g, false);
    p->global_batch = chunk;
    st = ad_codegen(p, bc);
    if (st == AD_OK)
      st = ad_jit_create(bc, &jit);
    unlink(bc);
  }
  void (*forward)(char *, void *) = NULL;
  if (st == AD_OK)
    st = ad_jit_lookup(jit, "ad_forward", (void **)&forward);
  if (st == AD_OK) {
    mem = aligned_alloc(64, (size_t)p->mem_bytes);
    AD_ASSERT(mem);
    memset(mem, 0, (size_t)p->mem_bytes);
    for (int k = 0; k < g->params.len; k++) {
      ad_value *v = g->params.data[k];
      if (p->offset[v->id] >= 0)
        memcpy(mem + p->offset[v->id], v->data, ad_value_bytes(v));
    }
    for (int i = 0; i < n_data; i++)
      if (!bind[i].bound && !in_vals[i]->batched)
        memcpy(mem + p->offset[in_vals[i]->id], arrays[i].data, ad_value_bytes(in_vals[i]));
    /* One chunk: outputs are written whole; several: row by row. */
    for (int i = 0; i < n_out; i++)
      out_data[i] = ad_xmalloc(ad_value_bytes(out_vals[i]) * (size_t)n_chunks);
    for (int64_t c = 0; c < n_chunks; c++) {
      int64_t s = c * chunk;
      for (int i = 0; i < n_data; i++) {
        if (bind[i].bound || !in_vals[i]->batched)
          continue;
        size_t row = ad_value_bytes(in_vals[i]) / (size_t)chunk;
        for (int64_t r = 0; r < chunk; r++) {
          int64_t src = s + r < N ? s + r : N - 1;
          memcpy(mem + p->offset[in_vals[i]->id] + (size_t)r * row,
                 (char *)arrays[i].data + (size_t)src * row, row);
        }
      }
      forward(mem, NULL);
      for (int i = 0; i < n_out; i++) {
        const ad_value *r = out_vals[i];
        while (r->kind == AD_VAL_ACT && r->producer->op->lower_kind == AD_LOWER_ALIAS)
          r = r->producer->in[0];
        size_t bytes = ad_value_bytes(out_vals[i]);
        /* A folded output is a constant: its bytes are in the graph. */
        const char *src = r->kind == AD_VAL_CONST ? r->data : mem + p->offset[r->id];
        if (n_chunks == 1) {
          memcpy(out_data[i], src, bytes);
          continue;
        }
        size_t row = bytes / (size_t)chunk;
        int64_t n = N - s < chunk ? N - s : chunk;
        memcpy((char *)out_data[i] + (size_t)s * row, src, (size_t)n * row);
      }
    }
    for (int i = 0; i < n_out && st == AD_OK; i++) {
      int64_t dims[AD_MAX_RANK];
      memcpy(dims, out_vals[i]->dims, sizeof dims);
      if (n_chunks > 1)
        dims[0] = N;
      st = ad_npy_save(outs[i].file, ad_dtype_name(out_vals[i]->dtype), out_vals[i]->rank, dims,
                       out_data[i]);
    }
  }
  free(mem);
  for (int i = 0; i < MAX_IO; i++)
    free(out_data[i]);
  free(out_data);
  for (int i = 0; i < n_data; i++) {
    ad_npy_free(&arrays[i]);
    free((char *)data[i].name);
  }
  for (int i = 0; i < n_out; i++)
    free((char *)outs[i].name);
  ad_jit_destroy(jit);
  ad_program_destroy(p);
  ad_graph_destroy(g);
  return st;
}
