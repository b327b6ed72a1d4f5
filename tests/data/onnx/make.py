#!/usr/bin/python3
"""Writes the tiny ONNX models that the loader, inspect and save tests read.

Run with Debian's interpreter from this folder: /usr/bin/python3 make.py
Every model is a few hundred bytes; the weights come from a fixed seed, so the
files are reproducible and the tests can recompute every expected number.

  mlp.onnx          x[N,4] -> Gemm(fc1) -> Relu -> Gemm(fc2) -> y[N,3], opset 13,
                    initializers in raw_data (the PyTorch exporter's layout)
  mlp_legacy.onnx   the same network written the old way: opset 12, initializers
                    in float_data and listed as graph inputs too, unnamed nodes,
                    a Constant node (value_float) feeding an Add, an int64
                    initializer in int64_data, a fixed batch of 2
  err_opset18.onnx  default-domain opset 18
  err_op_opset.onnx the mlp at opset 5, where Relu (from opset 6) does not exist
  err_convt.onnx    a ConvTranspose node named 'conv3' (not supported)
  err_truncated.onnx  the first 60 bytes of mlp.onnx
  err_dyn_axis.onnx an input whose axis 1 is dynamic
  err_str_init.onnx  a string initializer 'w'
  err_domain.onnx   a node of domain com.example (opset 1)
  err_no_graph.onnx a ModelProto without a graph
  err_undefined.onnx a node reading a value nobody defines
"""
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))


def weights():
    rng = np.random.RandomState(7)
    w1 = (rng.randn(8, 4) * 0.5).astype(np.float32)
    b1 = (rng.randn(8) * 0.1).astype(np.float32)
    w2 = (rng.randn(3, 8) * 0.5).astype(np.float32)
    b2 = (rng.randn(3) * 0.1).astype(np.float32)
    return w1, b1, w2, b2


def mlp_graph(batch="N", inits=None, names=True):
    w1, b1, w2, b2 = weights()
    nodes = [
        helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], name="fc1" if names else "", transB=1),
        helper.make_node("Relu", ["h"], ["r"], name="relu1" if names else ""),
        helper.make_node("Gemm", ["r", "W2", "b2"], ["y"], name="fc2" if names else "", transB=1),
    ]
    if inits is None:
        inits = [numpy_helper.from_array(a, n) for a, n in
                 ((w1, "W1"), (b1, "b1"), (w2, "W2"), (b2, "b2"))]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3])
    return nodes, inits, x, y


def save(model, name):
    with open(os.path.join(HERE, name), "wb") as f:
        f.write(model.SerializeToString())


def model(graph, opset=13, ir=8, extra_opsets=()):
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)] +
                          [helper.make_opsetid(d, v) for d, v in extra_opsets],
                          producer_name="autodist-tests")
    m.ir_version = ir
    return m


def main():
    nodes, inits, x, y = mlp_graph()
    mlp = model(helper.make_graph(nodes, "mlp", [x], [y], inits))
    onnx.checker.check_model(mlp)
    save(mlp, "mlp.onnx")

    # Legacy layout: float_data / int64_data, initializers as inputs, no node names.
    w1, b1, w2, b2 = weights()
    def typed(a, n):
        return helper.make_tensor(n, TensorProto.FLOAT, a.shape, a.flatten().tolist())
    inits = [typed(w1, "W1"), typed(b1, "b1"), typed(w2, "W2"), typed(b2, "b2"),
             helper.make_tensor("steps", TensorProto.INT64, [2], [5, -6])]
    nodes, _, x, _ = mlp_graph(batch=2, inits=inits, names=False)
    nodes[-1].output[0] = "y0"
    nodes += [helper.make_node("Constant", [], ["half"], value_float=0.5),
              helper.make_node("Add", ["y0", "half"], ["y"])]
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    init_inputs = [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                   for t in inits]
    legacy = model(helper.make_graph(nodes, "mlp_legacy", [x] + init_inputs, [y], inits),
                   opset=12, ir=6)
    onnx.checker.check_model(legacy)
    save(legacy, "mlp_legacy.onnx")

    nodes, inits, x, y = mlp_graph()
    save(model(helper.make_graph(nodes, "g", [x], [y], inits), opset=18), "err_opset18.onnx")
    save(model(helper.make_graph(nodes, "g", [x], [y], inits), opset=5), "err_op_opset.onnx")

    xi = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])
    yo = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, 5, 5])
    w = numpy_helper.from_array(np.ones((1, 1, 2, 2), np.float32), "w")
    convt = helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="conv3")
    save(model(helper.make_graph([convt], "g", [xi], [yo], [w])), "err_convt.onnx")

    save_bytes = mlp.SerializeToString()[:60]
    with open(os.path.join(HERE, "err_truncated.onnx"), "wb") as f:
        f.write(save_bytes)

    nodes, inits, _, y = mlp_graph()
    xd = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "features"])
    save(model(helper.make_graph(nodes, "g", [xd], [y], inits)), "err_dyn_axis.onnx")

    xi = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])
    yo = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])
    wstr = helper.make_tensor("w", TensorProto.STRING, [2], [b"a", b"b"])
    add = helper.make_node("Add", ["x", "w"], ["y"], name="add")
    save(model(helper.make_graph([add], "g", [xi], [yo], [wstr])), "err_str_init.onnx")

    custom = helper.make_node("Fancy", ["x"], ["y"], name="fancy", domain="com.example")
    save(model(helper.make_graph([custom], "g", [xi], [yo]), extra_opsets=[("com.example", 1)]),
         "err_domain.onnx")

    m = onnx.ModelProto()
    m.ir_version = 8
    m.opset_import.append(helper.make_opsetid("", 13))
    save(m, "err_no_graph.onnx")

    add = helper.make_node("Add", ["x", "ghost"], ["y"], name="add")
    save(model(helper.make_graph([add], "g", [xi], [yo])), "err_undefined.onnx")


if __name__ == "__main__":
    main()
