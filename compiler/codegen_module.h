/*
 * compiler/codegen_module.h: the entry point of codegen for the compile driver.
 */
#ifndef AD_CODEGEN_MODULE_H
#define AD_CODEGEN_MODULE_H

#include "program.h"

/*
 * Plans memory (memplan.c, after deciding fusion) and writes the device module
 * as LLVM bitcode to bc_path (atomically). The module defines ad_step
 * (training) or ad_forward (inference), see codegen.h. A lowering error (an op
 * configuration the kernels do not support) names the node.
 */
ad_status ad_codegen(ad_program *p, const char *bc_path);

#endif
