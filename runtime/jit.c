/*
 * runtime/jit.c: LLJIT over the LLVM C API (see jit.h).
 *
 * The bitcode is parsed into the context of an ORC thread-safe context, so the
 * module can be handed to LLJIT without copying. Before that it is retargeted
 * to the host (triple, data layout, and "target-cpu"/"target-features" on
 * every function, so the vectorizers see AVX2/AVX-512 where present), verified
 * (a compiler bug must not reach code generation), and optimized with
 * "default<O3>". LLJIT gets a target machine built with the same CPU, features
 * and aggressive codegen, and its main dylib a generator that resolves unknown
 * symbols in the running process (the ad_k_* kernels).
 *
 * LLVM reports some errors through the context's diagnostic handler (whose
 * default exits the process) and the JIT session's error reporter (whose
 * default prints): both are routed into ad_jit.diag so every failure becomes
 * one ad_status message. Like c3c, one struct owns every LLVM reference and
 * ad_jit_destroy is the only place that frees them.
 */
#include "jit.h"

#include <llvm-c/Analysis.h>
#include <llvm-c/BitReader.h>
#include <llvm-c/Core.h>
#include <llvm-c/Error.h>
#include <llvm-c/LLJIT.h>
#include <llvm-c/Orc.h>
#include <llvm-c/Target.h>
#include <llvm-c/TargetMachine.h>
#include <llvm-c/Transforms/PassBuilder.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct ad_jit {
  char *path;
  LLVMOrcThreadSafeContextRef tsctx;
  LLVMTargetMachineRef tm; /* for the optimization pipeline */
  LLVMOrcLLJITRef lljit;
  char *triple, *cpu, *features; /* LLVM-allocated (LLVMDisposeMessage) */
  char diag[2048];               /* last diagnostic LLVM reported */
};

static void on_diagnostic(LLVMDiagnosticInfoRef di, void *ctx) {
  ad_jit *jit = ctx;
  if (LLVMGetDiagInfoSeverity(di) != LLVMDSError)
    return;
  char *msg = LLVMGetDiagInfoDescription(di);
  snprintf(jit->diag, sizeof jit->diag, "%s", msg);
  LLVMDisposeMessage(msg);
}

static void on_session_error(void *ctx, LLVMErrorRef err) {
  ad_jit *jit = ctx;
  char *msg = LLVMGetErrorMessage(err);
  snprintf(jit->diag, sizeof jit->diag, "%s", msg);
  LLVMDisposeErrorMessage(msg);
}

/* Consumes `err` and fails with "PATH: error: WHAT: llvm's message". */
static ad_status fail_llvm(ad_jit *jit, const char *what, LLVMErrorRef err) {
  char *msg = LLVMGetErrorMessage(err);
  ad_status st = ad_fail(AD_ERR_INPUT, "%s: error: %s: %s", jit->path, what, msg);
  LLVMDisposeErrorMessage(msg);
  return st;
}

/* Everything before LLJIT: parse, retarget, verify, optimize. On success the
 * module is returned in *out (owned by the caller until handed to LLJIT). */
static ad_status prepare_module(ad_jit *jit, LLVMModuleRef *out) {
  LLVMContextRef ctx = LLVMOrcThreadSafeContextGetContext(jit->tsctx);
  LLVMContextSetDiagnosticHandler(ctx, on_diagnostic, jit);

  LLVMMemoryBufferRef buf;
  char *msg = NULL;
  if (LLVMCreateMemoryBufferWithContentsOfFile(jit->path, &buf, &msg)) {
    ad_status st = ad_fail(AD_ERR_INPUT, "%s: error: cannot read: %s", jit->path, msg);
    LLVMDisposeMessage(msg);
    return st;
  }
  LLVMModuleRef mod = NULL;
  LLVMBool bad = LLVMParseBitcodeInContext2(ctx, buf, &mod);
  LLVMDisposeMemoryBuffer(buf);
  if (bad)
    return ad_fail(AD_ERR_INPUT, "%s: error: not a valid LLVM bitcode file: %s", jit->path,
                   jit->diag[0] ? jit->diag : "parse failed");

  LLVMSetTarget(mod, jit->triple);
  LLVMTargetDataRef dl = LLVMCreateTargetDataLayout(jit->tm);
  LLVMSetModuleDataLayout(mod, dl);
  LLVMDisposeTargetData(dl);
  for (LLVMValueRef fn = LLVMGetFirstFunction(mod); fn; fn = LLVMGetNextFunction(fn)) {
    if (LLVMIsDeclaration(fn))
      continue;
    LLVMAddTargetDependentFunctionAttr(fn, "target-cpu", jit->cpu);
    LLVMAddTargetDependentFunctionAttr(fn, "target-features", jit->features);
  }

  if (LLVMVerifyModule(mod, LLVMReturnStatusAction, &msg)) {
    ad_status st =
        ad_fail(AD_ERR_INPUT, "%s: error: module fails verification: %s", jit->path, msg);
    LLVMDisposeMessage(msg);
    LLVMDisposeModule(mod);
    return st;
  }
  LLVMDisposeMessage(msg);

  LLVMPassBuilderOptionsRef opts = LLVMCreatePassBuilderOptions();
  LLVMPassBuilderOptionsSetLoopVectorization(opts, 1);
  LLVMPassBuilderOptionsSetSLPVectorization(opts, 1);
  LLVMPassBuilderOptionsSetLoopInterleaving(opts, 1);
  LLVMPassBuilderOptionsSetLoopUnrolling(opts, 1);
  LLVMErrorRef err = LLVMRunPasses(mod, "default<O3>", jit->tm, opts);
  LLVMDisposePassBuilderOptions(opts);
  if (err) {
    LLVMDisposeModule(mod);
    return fail_llvm(jit, "optimization failed", err);
  }
  *out = mod;
  return AD_OK;
}

/* The host target machine: real CPU name and features, -O3 code generation,
 * JIT code model. */
static ad_status create_target_machine(ad_jit *jit, LLVMTargetMachineRef *out) {
  LLVMTargetRef target;
  char *msg = NULL;
  if (LLVMGetTargetFromTriple(jit->triple, &target, &msg)) {
    ad_status st = ad_fail(AD_ERR_INPUT, "%s: error: no LLVM target for host %s: %s", jit->path,
                           jit->triple, msg);
    LLVMDisposeMessage(msg);
    return st;
  }
  *out = LLVMCreateTargetMachine(target, jit->triple, jit->cpu, jit->features,
                                 LLVMCodeGenLevelAggressive, LLVMRelocPIC, LLVMCodeModelJITDefault);
  AD_ASSERT(*out);
  return AD_OK;
}

static ad_status create_lljit(ad_jit *jit) {
  LLVMTargetMachineRef jit_tm;
  AD_TRY(create_target_machine(jit, &jit_tm));
  /* The builder takes the JTMB, which takes (and frees) jit_tm. */
  LLVMOrcLLJITBuilderRef builder = LLVMOrcCreateLLJITBuilder();
  LLVMOrcLLJITBuilderSetJITTargetMachineBuilder(
      builder, LLVMOrcJITTargetMachineBuilderCreateFromTargetMachine(jit_tm));
  LLVMErrorRef err = LLVMOrcCreateLLJIT(&jit->lljit, builder);
  if (err) {
    jit->lljit = NULL;
    return fail_llvm(jit, "cannot create the JIT", err);
  }
  LLVMOrcExecutionSessionSetErrorReporter(LLVMOrcLLJITGetExecutionSession(jit->lljit),
                                          on_session_error, jit);
  LLVMOrcDefinitionGeneratorRef gen;
  err = LLVMOrcCreateDynamicLibrarySearchGeneratorForProcess(
      &gen, LLVMOrcLLJITGetGlobalPrefix(jit->lljit), NULL, NULL);
  if (err)
    return fail_llvm(jit, "cannot search the process for symbols", err);
  LLVMOrcJITDylibAddGenerator(LLVMOrcLLJITGetMainJITDylib(jit->lljit), gen);
  return AD_OK;
}

ad_status ad_jit_create(const char *bitcode_path, ad_jit **out) {
  LLVMInitializeNativeTarget();
  LLVMInitializeNativeAsmPrinter();

  ad_jit *jit = ad_xcalloc(1, sizeof *jit);
  jit->path = ad_xstrdup(bitcode_path);
  jit->triple = LLVMGetDefaultTargetTriple();
  jit->cpu = LLVMGetHostCPUName();
  jit->features = LLVMGetHostCPUFeatures();
  jit->tsctx = LLVMOrcCreateNewThreadSafeContext();

  ad_status st = create_target_machine(jit, &jit->tm);
  LLVMModuleRef mod = NULL;
  if (st == AD_OK)
    st = prepare_module(jit, &mod);
  if (st == AD_OK)
    st = create_lljit(jit);
  if (st == AD_OK) {
    /* The thread-safe module takes the module; LLJIT takes the TSM. */
    LLVMOrcThreadSafeModuleRef tsm = LLVMOrcCreateNewThreadSafeModule(mod, jit->tsctx);
    mod = NULL;
    LLVMErrorRef err =
        LLVMOrcLLJITAddLLVMIRModule(jit->lljit, LLVMOrcLLJITGetMainJITDylib(jit->lljit), tsm);
    if (err) {
      LLVMOrcDisposeThreadSafeModule(tsm);
      st = fail_llvm(jit, "cannot add the module to the JIT", err);
    }
  }
  if (mod)
    LLVMDisposeModule(mod);
  if (st != AD_OK) {
    ad_jit_destroy(jit);
    return st;
  }
  *out = jit;
  return AD_OK;
}

ad_status ad_jit_lookup(ad_jit *jit, const char *name, void **addr) {
  LLVMOrcExecutorAddress a = 0;
  jit->diag[0] = 0;
  LLVMErrorRef err = LLVMOrcLLJITLookup(jit->lljit, &a, name);
  if (err) {
    /* The session reporter has the cause ("Symbols not found: [ ad_k_x ]");
     * the lookup error only says that materialization failed. */
    char what[2400];
    snprintf(what, sizeof what, "cannot resolve '%s'%s%s", name, jit->diag[0] ? ": " : "",
             jit->diag);
    return fail_llvm(jit, what, err);
  }
  if (!a)
    return ad_fail(AD_ERR_INPUT, "%s: error: symbol '%s' has address 0", jit->path, name);
  *addr = (void *)(uintptr_t)a;
  return AD_OK;
}

const char *ad_jit_cpu(const ad_jit *jit) {
  return jit->cpu;
}
const char *ad_jit_features(const ad_jit *jit) {
  return jit->features;
}

void ad_jit_destroy(ad_jit *jit) {
  if (!jit)
    return;
  if (jit->lljit) {
    LLVMErrorRef err = LLVMOrcDisposeLLJIT(jit->lljit);
    if (err)
      LLVMConsumeError(err);
  }
  if (jit->tsctx)
    LLVMOrcDisposeThreadSafeContext(jit->tsctx);
  if (jit->tm)
    LLVMDisposeTargetMachine(jit->tm);
  LLVMDisposeMessage(jit->triple);
  LLVMDisposeMessage(jit->cpu);
  LLVMDisposeMessage(jit->features);
  free(jit->path);
  free(jit);
}
