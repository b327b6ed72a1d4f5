/*
 * tests/fuzz/fuzz_onnx.c: libFuzzer target for the ONNX loader. The bytes are
 * a model file; loading runs every node's shape inference, so op attributes
 * and shapes are fuzzed as well as the protobuf reader.
 */
#include "compiler/onnx_load.h"

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  ad_graph *g;
  if (ad_onnx_load_buffer("fuzz.onnx", data, size, 2, &g) == AD_OK)
    ad_graph_destroy(g);
  return 0;
}
