/*
 * compiler/autodiff.h: reverse-mode differentiation of a graph, in place.
 */
#ifndef AD_AUTODIFF_H
#define AD_AUTODIFF_H

#include "ir.h"

/*
 * Appends to g the nodes computing d(loss)/d(p) for every trainable parameter
 * p (kind PARAM, not frozen). loss must be a float32 scalar. On success
 * grads[i] is the gradient of g->params.data[i] (NULL for frozen ones; a zero
 * constant for a trainable parameter the loss does not depend on).
 * An op without a gradient on the path is an error naming the node.
 */
ad_status ad_autodiff(ad_graph *g, ad_value *loss, ad_value **grads);

#endif
