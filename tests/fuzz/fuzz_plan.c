/*
 * tests/fuzz/fuzz_plan.c: libFuzzer target for the plan manifest reader
 * (plan.yaml, runtime/plan.c). Only the manifest is parsed and validated; the
 * file hashes are not checked (there is no plan folder).
 */
#include "runtime/plan.h"

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  ad_plan *p;
  if (ad_plan_parse_buffer("plan.yaml", (const char *)data, size, &p) == AD_OK) {
    if (p->n_tensors)
      (void)ad_plan_tensor_find(p, p->tensors[0].name);
    ad_plan_free(p);
  }
  return 0;
}
