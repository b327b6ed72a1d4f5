#!/usr/bin/python3
"""Writes the ONNX seeds of the fuzz_onnx corpus (seeds/onnx/op_*.onnx).

Run with Debian's interpreter from this folder: /usr/bin/python3 make_seeds.py
One tiny model per supported ONNX op (with the attributes the loader reads),
so that the fuzzer starts from inputs that reach every op's shape inference.
The other seeds are copies of real files (tests/data, examples, plans).
"""
import os

import numpy as np
from onnx import TensorProto, defs, helper, numpy_helper

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds", "onnx")
F = TensorProto.FLOAT


def init(name, arr):
    return numpy_helper.from_array(np.asarray(arr), name)


def model(name, nodes, inputs, outputs, inits=(), opset=13):
    g = helper.make_graph(nodes, name, inputs, outputs, list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    with open(os.path.join(HERE, "op_%s.onnx" % name), "wb") as f:
        f.write(m.SerializeToString())


def vi(name, shape, t=F):
    return helper.make_tensor_value_info(name, t, shape)


def main():
    x4 = vi("x", ["N", 4])
    y4 = vi("y", ["N", 4])
    for op in ("Add", "Sub", "Mul", "Div"):
        model(op.lower(), [helper.make_node(op, ["x", "b"], ["y"])], [x4], [y4],
              [init("b", np.ones(4, np.float32))])
    for op in ("Neg", "Relu", "Sigmoid", "Tanh", "Identity"):
        model(op.lower(), [helper.make_node(op, ["x"], ["y"])], [x4], [y4])
    model("dropout", [helper.make_node("Dropout", ["x"], ["y"])], [x4], [y4])
    for op in ("Softmax", "LogSoftmax"):
        model(op.lower(), [helper.make_node(op, ["x"], ["y"], axis=-1)], [x4], [y4])
    img = vi("x", ["N", 2, 6, 6])
    model("conv", [helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[3, 3],
                                    strides=[2, 2], pads=[1, 1, 1, 1], dilations=[1, 1],
                                    group=1)],
          [img], [vi("y", ["N", 3, 3, 3])],
          [init("w", np.ones((3, 2, 3, 3), np.float32)), init("b", np.zeros(3, np.float32))])
    model("maxpool", [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2],
                                       strides=[2, 2], pads=[0, 0, 0, 0])],
          [img], [vi("y", ["N", 2, 3, 3])])
    model("avgpool", [helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3],
                                       strides=[1, 1], pads=[1, 1, 1, 1],
                                       count_include_pad=1)],
          [img], [vi("y", ["N", 2, 6, 6])])
    model("gap", [helper.make_node("GlobalAveragePool", ["x"], ["y"])],
          [img], [vi("y", ["N", 2, 1, 1])])
    model("flatten", [helper.make_node("Flatten", ["x"], ["y"], axis=1)],
          [img], [vi("y", ["N", 72])])
    tgt = vi("t", ["N", 6, 6], TensorProto.INT64)
    model("negativeloglikelihoodloss",
          [helper.make_node("NegativeLogLikelihoodLoss", ["x", "t", "w"], ["y"],
                            reduction="mean", ignore_index=1)],
          [img, tgt], [vi("y", [])], [init("w", np.ones(2, np.float32))])
    model("softmaxcrossentropyloss",
          [helper.make_node("SoftmaxCrossEntropyLoss", ["x", "t"], ["y", "lp"],
                            reduction="none")],
          [img, tgt], [vi("y", ["N", 6, 6]), vi("lp", ["N", 2, 6, 6])])
    model("reshape", [helper.make_node("Reshape", ["x", "s"], ["y"])],
          [img], [vi("y", ["N", 72])], [init("s", np.array([-1, 72], np.int64))])
    model("transpose", [helper.make_node("Transpose", ["x"], ["y"], perm=[0, 2, 3, 1])],
          [img], [vi("y", ["N", 6, 6, 2])])
    model("gemm", [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1, alpha=1.0,
                                    beta=1.0)],
          [x4], [vi("y", ["N", 3])],
          [init("w", np.ones((3, 4), np.float32)), init("b", np.zeros(3, np.float32))])
    model("matmul", [helper.make_node("MatMul", ["x", "w"], ["y"])],
          [x4], [vi("y", ["N", 3])], [init("w", np.ones((4, 3), np.float32))])
    model("reducemean", [helper.make_node("ReduceMean", ["x"], ["y"], axes=[1], keepdims=0)],
          [x4], [vi("y", ["N"])])
    model("reducesum", [helper.make_node("ReduceSum", ["x", "a"], ["y"], keepdims=1)],
          [x4], [vi("y", ["N", 1])], [init("a", np.array([1], np.int64))])
    model("gather", [helper.make_node("Gather", ["w", "i"], ["y"], axis=0)],
          [vi("i", ["N", 3], TensorProto.INT64)], [vi("y", ["N", 3, 4])],
          [init("w", np.ones((10, 4), np.float32))])
    model("pad", [helper.make_node("Pad", ["x", "p"], ["y"], mode="constant")],
          [x4], [vi("y", ["N", 6])], [init("p", np.array([0, 1, 0, 1], np.int64))])
    model("constant", [helper.make_node("Constant", [], ["c"],
                                        value=numpy_helper.from_array(
                                            np.ones(4, np.float32), "c")),
                       helper.make_node("Add", ["x", "c"], ["y"])], [x4], [y4])

    # Every numeric dtype, with its initializer in the typed field ONNX uses for
    # it (double_data, uint64_data, int32_data holding halfs' bits...), through
    # an Add and a Cast.
    for code, name in ((TensorProto.DOUBLE, "f64"), (TensorProto.FLOAT16, "f16"),
                       (TensorProto.BFLOAT16, "bf16"), (TensorProto.INT8, "i8"),
                       (TensorProto.INT16, "i16"), (TensorProto.UINT16, "u16"),
                       (TensorProto.UINT32, "u32"), (TensorProto.UINT64, "u64")):
        b = helper.make_tensor("b", code, [4], [1, 2, 3, 4])
        model("dt_" + name, [helper.make_node("Add", ["x", "b"], ["s"]),
                             helper.make_node("Cast", ["s"], ["y"], to=TensorProto.FLOAT)],
              [vi("x", ["N", 4], code)], [y4], [b], opset=17)
    # Every other op the loader knows, applied to x (as many times as the
    # schema's minimum arity): the fuzzer mutates the attributes from there.
    done = {f[3:-5] for f in os.listdir(HERE) if f.startswith("op_")}
    for op in OPS.split():
        if op.lower() in done:
            continue
        n_in = max(1, defs.get_schema(op, 17).min_input)
        model(op.lower(), [helper.make_node(op, ["x"] * n_in, ["y"])], [x4], [y4], opset=17)


# `autodist inspect --ops` (default domain) when the seeds were written.
OPS = """
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization
BitShift Cast CastLike Ceil Celu Clip Concat ConstantOfShape Conv Cos Cosh DepthToSpace Div
Dropout Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gemm
GlobalAveragePool GlobalMaxPool Greater GreaterOrEqual HardSigmoid HardSwish Hardmax Identity
InstanceNormalization IsInf IsNaN LRN LayerNormalization LeakyRelu Less LessOrEqual Log
LogSoftmax LpPool MatMul Max MaxPool Mean MeanVarianceNormalization Min Mod Mul Neg
NegativeLogLikelihoodLoss Not OneHot Or PRelu Pad Pow Range Reciprocal ReduceL1 ReduceL2
ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum
ReduceSumSquare Relu Reshape Round Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax
SoftmaxCrossEntropyLoss Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh
ThresholdedRelu Tile Transpose Trilu Unsqueeze Where Xor
"""

if __name__ == "__main__":
    main()
