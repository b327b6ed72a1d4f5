/*
 * tests/fuzz/fuzz_train.c: libFuzzer target for the train.yml parser
 * (compiler/train_config.c).
 */
#include "compiler/train_config.h"

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  ad_train_config *c;
  if (ad_train_config_parse_buffer("fuzz.yml", (const char *)data, size, &c) == AD_OK)
    ad_train_config_free(c);
  return 0;
}
