/*
 * tests/fuzz/fuzz_spec.c: libFuzzer target for the resource spec parser
 * (resource_spec.yml, resource_specs/spec.c).
 */
#include "resource_specs/spec.h"

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  ad_spec *s;
  if (ad_spec_parse_buffer("fuzz.yml", (const char *)data, size, &s) == AD_OK) {
    (void)ad_spec_worker_count(s);
    ad_spec_free(s);
  }
  return 0;
}
