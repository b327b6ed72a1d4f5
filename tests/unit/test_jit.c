/*
 * tests/unit/test_jit.c: runtime/jit.c end to end. Builds small modules with
 * the LLVM C API (as the compiler does), writes them as bitcode, JITs them and
 * calls them. The module's undefined symbols must resolve to this process: a
 * function of this test (test_jit_record, exported because the test is linked
 * with ENABLE_EXPORTS) and a runtime kernel (ad_k_add_rowvec). Expected values
 * are plain arithmetic worked out in the comments.
 */
#include "runtime/jit.h"

#include <llvm-c/BitWriter.h>
#include <llvm-c/Core.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"

/* Called from JIT code: records the arguments it saw. */
int64_t test_jit_calls, test_jit_last;
void test_jit_record(int64_t x);
void test_jit_record(int64_t x) {
  test_jit_calls++;
  test_jit_last = x;
}

/* ad_step(mem, rt, step): for i in [0, 1000): f[i] = f[i] * 2 + 1 (f = (float *)mem),
 * then ad_k_add_rowvec({2, 3}, f + 1000, f + 1006) (a 2x3 matrix += a 3-row),
 * then test_jit_record(step). With `missing`, it also calls a function nobody defines. */
static void write_module(const char *path, int missing) {
  LLVMContextRef ctx = LLVMContextCreate();
  LLVMModuleRef mod = LLVMModuleCreateWithNameInContext("test", ctx);
  LLVMBuilderRef b = LLVMCreateBuilderInContext(ctx);
  LLVMTypeRef ptr = LLVMPointerTypeInContext(ctx, 0);
  LLVMTypeRef i64 = LLVMInt64TypeInContext(ctx), f32 = LLVMFloatTypeInContext(ctx);
  LLVMTypeRef vd = LLVMVoidTypeInContext(ctx);

  LLVMTypeRef step_params[] = {ptr, ptr, i64};
  LLVMTypeRef step_ty = LLVMFunctionType(vd, step_params, 3, 0);
  LLVMValueRef step = LLVMAddFunction(mod, "ad_step", step_ty);
  LLVMTypeRef rec_params[] = {i64};
  LLVMTypeRef rec_ty = LLVMFunctionType(vd, rec_params, 1, 0);
  LLVMValueRef rec = LLVMAddFunction(mod, "test_jit_record", rec_ty);
  LLVMTypeRef k_params[] = {ptr, ptr, ptr};
  LLVMTypeRef k_ty = LLVMFunctionType(vd, k_params, 3, 0);
  LLVMValueRef kern = LLVMAddFunction(mod, "ad_k_add_rowvec", k_ty);

  LLVMBasicBlockRef entry = LLVMAppendBasicBlockInContext(ctx, step, "entry");
  LLVMBasicBlockRef loop = LLVMAppendBasicBlockInContext(ctx, step, "loop");
  LLVMBasicBlockRef done = LLVMAppendBasicBlockInContext(ctx, step, "done");
  LLVMValueRef mem = LLVMGetParam(step, 0);
  LLVMPositionBuilderAtEnd(b, entry);
  LLVMBuildBr(b, loop);

  LLVMPositionBuilderAtEnd(b, loop);
  LLVMValueRef i = LLVMBuildPhi(b, i64, "i");
  LLVMValueRef p = LLVMBuildGEP2(b, f32, mem, &i, 1, "p");
  LLVMValueRef v = LLVMBuildLoad2(b, f32, p, "v");
  v = LLVMBuildFMul(b, v, LLVMConstReal(f32, 2.0), "v2");
  v = LLVMBuildFAdd(b, v, LLVMConstReal(f32, 1.0), "v3");
  LLVMBuildStore(b, v, p);
  LLVMValueRef next = LLVMBuildAdd(b, i, LLVMConstInt(i64, 1, 0), "next");
  LLVMValueRef more = LLVMBuildICmp(b, LLVMIntULT, next, LLVMConstInt(i64, 1000, 0), "more");
  LLVMBuildCondBr(b, more, loop, done);
  LLVMValueRef in_vals[] = {LLVMConstInt(i64, 0, 0), next};
  LLVMBasicBlockRef in_blocks[] = {entry, loop};
  LLVMAddIncoming(i, in_vals, in_blocks, 2);

  LLVMPositionBuilderAtEnd(b, done);
  /* p = {2, 3} as a private constant array. */
  LLVMValueRef dims[] = {LLVMConstInt(i64, 2, 0), LLVMConstInt(i64, 3, 0)};
  LLVMValueRef pinit = LLVMConstArray(i64, dims, 2);
  LLVMValueRef pglob = LLVMAddGlobal(mod, LLVMTypeOf(pinit), "kparams");
  LLVMSetInitializer(pglob, pinit);
  LLVMSetGlobalConstant(pglob, 1);
  LLVMSetLinkage(pglob, LLVMPrivateLinkage);
  LLVMValueRef off_y = LLVMConstInt(i64, 1000, 0), off_b = LLVMConstInt(i64, 1006, 0);
  LLVMValueRef kargs[] = {pglob, LLVMBuildGEP2(b, f32, mem, &off_y, 1, "y"),
                          LLVMBuildGEP2(b, f32, mem, &off_b, 1, "bias")};
  LLVMBuildCall2(b, k_ty, kern, kargs, 3, "");
  LLVMValueRef rargs[] = {LLVMGetParam(step, 2)};
  LLVMBuildCall2(b, rec_ty, rec, rargs, 1, "");
  if (missing) {
    LLVMValueRef nope = LLVMAddFunction(mod, "ad_k_does_not_exist", rec_ty);
    LLVMBuildCall2(b, rec_ty, nope, rargs, 1, "");
  }
  LLVMBuildRetVoid(b);

  if (LLVMWriteBitcodeToFile(mod, path) != 0) {
    fprintf(stderr, "cannot write %s\n", path);
    exit(1);
  }
  LLVMDisposeBuilder(b);
  LLVMDisposeModule(mod);
  LLVMContextDispose(ctx);
}

static void test_step_runs_and_calls_process_functions(const char *dir) {
  char path[512];
  snprintf(path, sizeof path, "%s/ok.bc", dir);
  write_module(path, 0);
  ad_jit *jit = NULL;
  ad_status st = ad_jit_create(path, &jit);
  CHECK(st == AD_OK);
  if (st != AD_OK) {
    fprintf(stderr, "  %s\n", ad_error_message());
    return;
  }
  CHECK(strlen(ad_jit_cpu(jit)) > 0);
  void (*step)(char *, void *, int64_t) = NULL;
  st = ad_jit_lookup(jit, "ad_step", (void **)&step);
  CHECK(st == AD_OK && step);
  if (step) {
    float *f = aligned_alloc(64, 1024 * sizeof(float));
    for (int i = 0; i < 1024; i++)
      f[i] = (float)i;
    step((char *)f, NULL, 7);
    /* The loop touches f[0..1000): f[i] = 2i + 1, so f[999] = 1999. The matrix
     * f[1000..1006) = 1000..1005 gets the row f[1006..1009) = {1006, 1007, 1008}
     * added: row 0 = {2006, 2008, 2010}, row 1 = {2009, 2011, 2013}. */
    CHECK(f[0] == 1.0f && f[999] == 1999.0f);
    CHECK(f[1000] == 2006.0f && f[1001] == 2008.0f && f[1002] == 2010.0f);
    CHECK(f[1003] == 2009.0f && f[1004] == 2011.0f && f[1005] == 2013.0f);
    CHECK(f[1006] == 1006.0f);
    CHECK(test_jit_calls == 1 && test_jit_last == 7);
    free(f);
  }
  /* A symbol the module does not define. */
  void *addr = NULL;
  st = ad_jit_lookup(jit, "ad_forward", &addr);
  CHECK(st == AD_ERR_INPUT);
  CHECK(strstr(ad_error_message(), "cannot resolve 'ad_forward'") != NULL);
  ad_jit_destroy(jit);
}

static void test_unresolved_kernel_is_an_error(const char *dir) {
  char path[512];
  snprintf(path, sizeof path, "%s/missing.bc", dir);
  write_module(path, 1);
  ad_jit *jit = NULL;
  ad_status st = ad_jit_create(path, &jit);
  CHECK(st == AD_OK);
  if (st != AD_OK)
    return;
  void *addr = NULL;
  st = ad_jit_lookup(jit, "ad_step", &addr);
  CHECK(st == AD_ERR_INPUT);
  CHECK(strstr(ad_error_message(), "ad_k_does_not_exist") != NULL);
  if (!strstr(ad_error_message(), "ad_k_does_not_exist"))
    fprintf(stderr, "  message: %s\n", ad_error_message());
  ad_jit_destroy(jit);
}

static void test_bad_files_are_input_errors(const char *dir) {
  char path[512];
  snprintf(path, sizeof path, "%s/garbage.bc", dir);
  FILE *f = fopen(path, "wb");
  fputs("this is not bitcode", f);
  fclose(f);
  ad_jit *jit = NULL;
  CHECK(ad_jit_create(path, &jit) == AD_ERR_INPUT);
  CHECK(strstr(ad_error_message(), "garbage.bc: error: not a valid LLVM bitcode file") != NULL);
  CHECK(jit == NULL);

  snprintf(path, sizeof path, "%s/absent.bc", dir);
  CHECK(ad_jit_create(path, &jit) == AD_ERR_INPUT);
  CHECK(strstr(ad_error_message(), "absent.bc: error: cannot read") != NULL);
}

int main(void) {
  char dir[] = "/tmp/ad_test_jit.XXXXXX";
  if (!mkdtemp(dir)) {
    perror("mkdtemp");
    return 1;
  }
  test_step_runs_and_calls_process_functions(dir);
  test_unresolved_kernel_is_an_error(dir);
  test_bad_files_are_input_errors(dir);
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0)
    failures++;
  if (failures)
    fprintf(stderr, "test_jit: %d check(s) failed\n", failures);
  return failures != 0;
}
