/*
 * tests/unit/test_onnx_save.c: the --save path end to end on the C side.
 * A model from tests/data/onnx is stripped of some initializers (as the plan
 * writer does), trained values are appended by the hand-written protobuf
 * encoder, and the result must (1) load back through protobuf-c with the new
 * values and every other initializer unchanged, and (2) pass onnx.checker,
 * with onnx.load seeing the exact appended values (Debian's /usr/bin/python3).
 */
#include "compiler/onnx_load.h"
#include "runtime/onnx_save.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"

static char dir[64];

#define CHECK_OK(expr)                                                                             \
  do {                                                                                             \
    if ((expr) != AD_OK) {                                                                         \
      fprintf(stderr, "%s:%d: %s failed: %s\n", __FILE__, __LINE__, #expr, ad_error_message());    \
      failures++;                                                                                  \
    }                                                                                              \
  } while (0)

static const char *at(const char *name) {
  static char buf[8][256];
  static int k;
  k = (k + 1) % 8;
  snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
  return buf[k];
}

static ad_value *param(const ad_graph *g, const char *name) {
  for (int i = 0; i < g->params.len; i++)
    if (!strcmp(g->params.data[i]->name, name))
      return g->params.data[i];
  return NULL;
}

static int same_data(const ad_value *a, const ad_value *b) {
  return a && b && ad_value_bytes(a) == ad_value_bytes(b) &&
         !memcmp(a->data, b->data, ad_value_bytes(a));
}

static void test_strip_save_reload(void) {
  ad_graph *orig = NULL, *g = NULL;
  CHECK_OK(ad_onnx_load("data/onnx/mlp.onnx", 2, &orig));
  if (!orig)
    return;
  CHECK(orig->params.len == 4 && orig->nodes.len == 3 && orig->inputs.len == 1);

  char *strip[] = {"W1", "b1"};
  CHECK_OK(ad_onnx_strip_initializers("data/onnx/mlp.onnx", at("stripped.onnx"), 2, strip));
  /* Without W1 the stripped model is missing a value: the loader says where. */
  char want[512];
  snprintf(want, sizeof want,
           "%s: node 'fc1' (Gemm): error: input 'W1' is not a graph input, an initializer or "
           "the output of an earlier node",
           at("stripped.onnx"));
  CHECK(ad_onnx_load(at("stripped.onnx"), 2, &g) == AD_ERR_INPUT);
  if (strcmp(ad_error_message(), want))
    fprintf(stderr, "got  %s\nwant %s\n", ad_error_message(), want), failures++;

  float w1[32], b1[8];
  for (int i = 0; i < 32; i++)
    w1[i] = (float)i * 0.25f - 4.0f;
  for (int i = 0; i < 8; i++)
    b1[i] = 1.0f / (float)(i + 1);
  int64_t dw[2] = {8, 4}, db[1] = {8};
  ad_named_tensor t[2] = {{"W1", 2, dw, w1}, {"b1", 1, db, b1}};
  CHECK_OK(ad_onnx_save(at("stripped.onnx"), at("saved.onnx"), 2, t));

  /* The saved file is the stripped bytes followed by one `graph` field (tag 0x3a). */
  char *s, *o;
  size_t ns, no;
  if (ad_file_read(at("stripped.onnx"), &s, &ns) == AD_OK) {
    if (ad_file_read(at("saved.onnx"), &o, &no) == AD_OK) {
      CHECK(no > ns && !memcmp(s, o, ns) && (unsigned char)o[ns] == 0x3a);
      free(o);
    }
    free(s);
  }

  CHECK_OK(ad_onnx_load(at("saved.onnx"), 2, &g));
  if (g) {
    CHECK(g->params.len == 4 && g->nodes.len == 3 && g->outputs.len == 1);
    ad_value *nw = param(g, "W1"), *nb = param(g, "b1");
    CHECK(nw && nw->rank == 2 && nw->dims[0] == 8 && nw->dims[1] == 4 && !nw->frozen);
    CHECK(nw && !memcmp(nw->data, w1, sizeof w1));
    CHECK(nb && nb->rank == 1 && nb->dims[0] == 8 && !memcmp(nb->data, b1, sizeof b1));
    CHECK(same_data(param(g, "W2"), param(orig, "W2")));
    CHECK(same_data(param(g, "b2"), param(orig, "b2")));
    CHECK(g->outputs.len == 1 && g->outputs.data[0]->rank == 2 &&
          g->outputs.data[0]->dims[0] == 2 && g->outputs.data[0]->dims[1] == 3);
    ad_graph_destroy(g);
    g = NULL;
  }

  /* Saving nothing copies the base model byte for byte. */
  CHECK_OK(ad_onnx_save("data/onnx/mlp.onnx", at("copy.onnx"), 0, NULL));
  if (ad_file_read("data/onnx/mlp.onnx", &s, &ns) == AD_OK) {
    if (ad_file_read(at("copy.onnx"), &o, &no) == AD_OK) {
      CHECK(no == ns && !memcmp(s, o, ns));
      free(o);
    }
    free(s);
  }

  /* onnx itself: the checker accepts the file and sees the appended values. */
  char cmd[2048];
  snprintf(
      cmd, sizeof cmd,
      "/usr/bin/python3 -c \"import onnx, numpy as np\n"
      "from onnx import numpy_helper as nh\n"
      "m = onnx.load('%s'); onnx.checker.check_model(m)\n"
      "i = {t.name: nh.to_array(t) for t in m.graph.initializer}\n"
      "assert sorted(i) == ['W1', 'W2', 'b1', 'b2'], sorted(i)\n"
      "assert (i['W1'] == np.arange(32, dtype=np.float32).reshape(8, 4) * 0.25 - 4).all()\n"
      "assert (i['b1'] == (1 / np.arange(1, 9, dtype=np.float32))).all()\n"
      "o = {t.name: nh.to_array(t) for t in onnx.load('data/onnx/mlp.onnx').graph.initializer}\n"
      "assert (i['W2'] == o['W2']).all() and (i['b2'] == o['b2']).all()\n"
      "assert [n.name for n in m.graph.node] == ['fc1', 'relu1', 'fc2']\"",
      at("saved.onnx"));
  CHECK(system(cmd) == 0);
  ad_graph_destroy(orig);
}

/* Old exporters list initializers as graph inputs too: stripping keeps the
 * input, so the saved model has the original structure; a tensor of rank 0 and
 * an extra initializer round-trip as well. */
static void test_legacy_layout(void) {
  char *strip[] = {"W2"};
  CHECK_OK(ad_onnx_strip_initializers("data/onnx/mlp_legacy.onnx", at("legacy_s.onnx"), 1, strip));
  float w2[24], scalar = 3.5f;
  for (int i = 0; i < 24; i++)
    w2[i] = (float)(i % 5) - 2.0f;
  int64_t dw[2] = {3, 8};
  ad_named_tensor t[2] = {{"W2", 2, dw, w2}, {"extra", 0, NULL, &scalar}};
  CHECK_OK(ad_onnx_save(at("legacy_s.onnx"), at("legacy_saved.onnx"), 2, t));
  ad_graph *g = NULL;
  CHECK_OK(ad_onnx_load(at("legacy_saved.onnx"), 1, &g));
  if (!g)
    return;
  /* x is the only data input: W1..b2 are inputs and initializers (parameters). */
  CHECK(g->inputs.len == 1 && !strcmp(g->inputs.data[0]->name, "x"));
  CHECK(g->inputs.data[0]->dims[0] == 2 && !g->inputs.data[0]->batched);
  ad_value *w = param(g, "W2"), *e = param(g, "extra");
  CHECK(w && !memcmp(w->data, w2, sizeof w2));
  CHECK(e && e->rank == 0 && *(float *)e->data == 3.5f);
  /* steps (int64) is a constant, not a parameter. */
  CHECK(g->params.len == 5 && !param(g, "steps"));
  ad_graph_destroy(g);

  char cmd[1024];
  snprintf(cmd, sizeof cmd,
           "/usr/bin/python3 -c \"import onnx\n"
           "m = onnx.load('%s'); onnx.checker.check_model(m)\n"
           "assert [i.name for i in m.graph.input] == ['x', 'W1', 'b1', 'W2', 'b2', 'steps']\"",
           at("legacy_saved.onnx"));
  CHECK(system(cmd) == 0);
}

int main(void) {
  snprintf(dir, sizeof dir, "/tmp/ad_test_onnx_save_XXXXXX");
  if (!mkdtemp(dir)) {
    perror("mkdtemp");
    return 1;
  }
  test_strip_save_reload();
  test_legacy_layout();
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  if (system(cmd) != 0)
    fprintf(stderr, "test_onnx_save: could not remove %s\n", dir);
  if (failures)
    fprintf(stderr, "test_onnx_save: %d check(s) failed\n", failures);
  else
    printf("test_onnx_save: ok\n");
  return failures != 0;
}
