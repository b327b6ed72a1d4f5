/*
 * compiler/ops/types.c: the dtypes each supported ONNX op computes on, for
 * `autodist inspect --ops` and docs/ops.md. An op's dtypes are those of one
 * input (its data: input 0 unless noted), or of its output 0 where the inputs
 * do not carry it (ConstantOfShape). The other inputs (indices, shapes, axes,
 * bounds) take what ONNX gives them.
 *
 * The ops' shape inference enforces the dtypes; this table states them.
 * tests/conformance/dtypes.py checks, op by op against onnxruntime, that each
 * listed dtype computes right and each other one is refused.
 */
#include "../op.h"

#include <stdio.h>
#include <string.h>

#define F32 (1u << AD_F32)
#define F ((1u << AD_F32) | (1u << AD_F64) | (1u << AD_F16) | (1u << AD_BF16))
#define I ((1u << AD_I64) | (1u << AD_I32) | (1u << AD_I16) | (1u << AD_I8))
#define U ((1u << AD_U8) | (1u << AD_U16) | (1u << AD_U32) | (1u << AD_U64))
#define B (1u << AD_BOOL)
#define ALL (F | I | U | B)
#define FH ((1u << AD_F32) | (1u << AD_F64) | (1u << AD_F16)) /* no bfloat16 */
#define RI ((1u << AD_I32) | (1u << AD_I64) | (1u << AD_U32) | (1u << AD_U64))

static const struct {
  const char *op;
  unsigned types;
  int which; /* input index, or -1: output 0 */
} table[] = {
    /* elementwise (ops/elementwise.c) */
    {"Abs", F | I | U, 0},
    {"Acos", F, 0},
    {"Acosh", F, 0},
    {"Add", F | I | U, 0},
    {"And", B, 0},
    {"Asin", F, 0},
    {"Asinh", F, 0},
    {"Atan", F, 0},
    {"Atanh", F, 0},
    {"BitShift", U, 0},
    {"Cast", ALL, 0},
    {"CastLike", ALL, 0},
    {"Ceil", F, 0},
    {"Celu", F, 0},
    {"Clip", F | I | U, 0},
    {"Cos", F, 0},
    {"Cosh", F, 0},
    {"Div", F | I | U, 0},
    {"Elu", F, 0},
    {"Equal", ALL, 0},
    {"Erf", F, 0},
    {"Exp", F, 0},
    {"Floor", F, 0},
    {"Greater", F | I | U, 0},
    {"GreaterOrEqual", F | I | U, 0},
    {"HardSigmoid", F, 0},
    {"HardSwish", F, 0},
    {"IsInf", F, 0},
    {"IsNaN", F, 0},
    {"LeakyRelu", F, 0},
    {"Less", F | I | U, 0},
    {"LessOrEqual", F | I | U, 0},
    {"Log", F, 0},
    {"Max", F | I | U, 0},
    {"Mean", F, 0},
    {"Min", F | I | U, 0},
    {"Mod", F | I | U, 0},
    {"Mul", F | I | U, 0},
    {"Neg", F | I, 0},
    {"Not", B, 0},
    {"Or", B, 0},
    {"PRelu", F | I, 0},
    {"Pow", F | I, 0},
    {"Reciprocal", F, 0},
    {"Relu", F | I, 0},
    {"Round", F, 0},
    {"Selu", F, 0},
    {"Shrink", F, 0},
    {"Sigmoid", F, 0},
    {"Sign", F | I | U, 0},
    {"Sin", F, 0},
    {"Sinh", F, 0},
    {"Softplus", F, 0},
    {"Softsign", F, 0},
    {"Sqrt", F, 0},
    {"Sub", F | I | U, 0},
    {"Sum", F, 0},
    {"Tan", F, 0},
    {"Tanh", F, 0},
    {"ThresholdedRelu", F, 0},
    {"Where", ALL, 1},
    {"Xor", B, 0},
    /* data movement, by element size (ops/shape.c, ops/index.c) */
    {"Concat", ALL, 0},
    {"ConstantOfShape", ALL, -1},
    {"DepthToSpace", ALL, 0},
    {"Expand", ALL, 0},
    {"EyeLike", ALL, -1},
    {"Flatten", ALL, 0},
    {"Gather", ALL, 0},
    {"GatherElements", ALL, 0},
    {"GatherND", ALL, 0},
    {"Identity", ALL, 0},
    {"OneHot", ALL, -1},
    {"Pad", ALL, 0},
    {"Range", F32 | (1u << AD_I64) | (1u << AD_I32), 0},
    {"Reshape", ALL, 0},
    {"Shape", ALL, 0},
    {"Size", ALL, 0},
    {"Slice", ALL, 0},
    {"SpaceToDepth", ALL, 0},
    {"Split", ALL, 0},
    {"Squeeze", ALL, 0},
    {"Tile", ALL, 0},
    {"Transpose", ALL, 0},
    {"Trilu", ALL, 0},
    {"Unsqueeze", ALL, 0},
    /* pooling */
    {"MaxPool", F32 | (1u << AD_U8) | (1u << AD_I8), 0},
    /* reductions (ops/reduce.c): float16 and float64 too, and the integer
     * types ONNX gives each */
    {"ArgMax", FH | I | U, 0},
    {"ArgMin", FH | I | U, 0},
    {"Hardmax", FH, 0},
    {"ReduceL1", FH | RI, 0},
    {"ReduceL2", FH | RI, 0},
    {"ReduceLogSum", FH | RI, 0},
    {"ReduceLogSumExp", FH | RI, 0},
    {"ReduceMax", FH | RI | (1u << AD_I8) | (1u << AD_U8), 0},
    {"ReduceMean", FH | RI, 0},
    {"ReduceMin", FH | RI | (1u << AD_I8) | (1u << AD_U8), 0},
    {"ReduceProd", FH | RI, 0},
    {"ReduceSum", FH | RI, 0},
    {"ReduceSumSquare", FH | RI, 0},
    /* random (ops/random.c) */
    {"Dropout", FH, 0},
    /* losses (ops/loss.c) */
    {"NegativeLogLikelihoodLoss", FH, 0},
    {"SoftmaxCrossEntropyLoss", FH, 0},
};

/* Everything else (Conv, Gemm, MatMul, the normalizations, Softmax and the
 * other pools) computes on float32. */
#define DEFAULT_TYPES F32

unsigned ad_op_types(const char *op_type, int *which) {
  for (size_t i = 0; i < sizeof table / sizeof *table; i++)
    if (!strcmp(table[i].op, op_type)) {
      if (which)
        *which = table[i].which;
      return table[i].types;
    }
  if (which)
    *which = 0;
  return DEFAULT_TYPES;
}

void ad_op_types_str(unsigned types, char *buf, size_t cap) {
  static const struct {
    const char *name;
    unsigned mask;
  } classes[] = {{"float", F}, {"int", I}, {"uint", U}};
  size_t n = 0;
  buf[0] = 0;
  for (size_t c = 0; c < sizeof classes / sizeof *classes; c++)
    if ((types & classes[c].mask) == classes[c].mask) {
      n += (size_t)snprintf(buf + n, cap - n, "%s%s", n ? " " : "", classes[c].name);
      types &= ~classes[c].mask;
    }
  static const ad_dtype order[] = {AD_F16, AD_BF16, AD_F32, AD_F64, AD_I8,  AD_I16, AD_I32,
                                   AD_I64, AD_U8,   AD_U16, AD_U32, AD_U64, AD_BOOL};
  for (size_t k = 0; k < sizeof order / sizeof *order && n < cap; k++)
    if (types >> order[k] & 1)
      n += (size_t)snprintf(buf + n, cap - n, "%s%s", n ? " " : "", ad_dtype_name(order[k]));
}
