/*
 * compiler/fold.h: constant folding at compile time, for the batch size the
 * graph was loaded with.
 *
 * A value is constant when it is a CONST, or the output of a node whose inputs
 * are all constant, or the output of a node that reads only its inputs'
 * static shapes (Shape, Size). Folding computes such values and turns them
 * into CONST values owned by the graph's arena; the nodes that produced them
 * leave the graph.
 *
 * Shape and Size are read off the static dims directly. Everything else runs
 * through the same generated code as at run time: the constant cone is copied
 * into a small graph, lowered by codegen, JIT-compiled and run once, and the
 * results are copied back, so every op has exactly one semantics.
 */
#ifndef AD_FOLD_H
#define AD_FOLD_H

#include "ir.h"

/* Whether v is constant in the sense above (CONST, or computable at compile time). */
bool ad_fold_is_const(const ad_graph *g, const ad_value *v);

/*
 * Makes v a CONST value when it is constant: computes v and every value of
 * its cone in one JIT run (Shape/Size without one). A value that is not
 * constant is left unchanged (AD_OK): the caller's shape inference reports it.
 * The nodes whose outputs became constants stay in g->nodes (node ids stay
 * positions while the loader adds nodes) until ad_fold_graph removes them.
 * Errors are lowering or JIT failures naming the node.
 */
ad_status ad_fold_value(ad_graph *g, ad_value *v);
/* The same for several values at once: their cones fold in one JIT run. */
ad_status ad_fold_values(ad_graph *g, int n, ad_value *const *vs);

/*
 * The final pass: folds every constant activation in one JIT run, then removes
 * dead nodes (whose outputs are neither used nor graph outputs) until none is
 * left. Graph outputs that are constant become CONST values too.
 */
ad_status ad_fold_graph(ad_graph *g);

/* Statistics of the folds run in this process (for measurements and tests). */
typedef struct ad_fold_stats {
  int jit_runs;       /* cones compiled and run */
  int nodes_folded;   /* nodes replaced by constants (including Shape/Size) */
  double jit_seconds; /* wall time spent building, compiling and running cones */
} ad_fold_stats;
ad_fold_stats ad_fold_get_stats(void);

#endif
