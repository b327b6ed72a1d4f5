#!/usr/bin/env python3
"""tests/ref/test_reduce_dtypes.py: the Reduce* family, ArgMax / ArgMin and
Hardmax over the dtypes other than float32 (float32 is tests/ref/test_norm_ops.py).

Each case is a one-node ONNX model run by `autodist infer`; its output must
have the input's dtype (int64 for ArgMax/ArgMin) and match the reference:
- onnxruntime where it has a CPU kernel for the op and dtype (float64,
  float16, int32, int64 for every reduction; int8 / uint8 for ReduceMax/Min;
  ArgMax/ArgMin over float64, float16, int8, uint8, int32, int64; Hardmax
  float16);
- elsewhere numpy, written from the ONNX definitions with onnxruntime's
  integer semantics (sums wrap in the dtype, Mean is the wrapped sum divided by
  the count truncated toward zero, L2 / LogSum truncate sqrt / log of the
  wrapped sum): uint32 / uint64 (no onnxruntime kernel), Hardmax float64, and
  integer ReduceLogSumExp, where onnxruntime truncates each exp term (its
  int32 result for [-1, 0, 0] is 0; log(e^-1 + 2) is 0.86...) and autodist
  computes log(sum(exp(x))) in double, then truncates.
Integer and argmax results must be equal; float64 within rtol 1e-12 (the
summation order differs from onnxruntime's); float16 equal to onnxruntime's
(both round a float32-or-wider result once to float16).

Axes come from the attribute (opset 11/13) or, for ReduceSum at opset 13, from
a constant input (keepdims 0 and 1, negative axes, no axes, and
noop_with_empty_axes). Dtypes an op does not implement (bfloat16, ReduceSum of
int8, ReduceMax of int8 before opset 12, Hardmax of int32) must fail at
compile time with exit code 2 and a message naming the node.

    AUTODIST=build/autodist AD_SRC=. /usr/bin/python3 tests/ref/test_reduce_dtypes.py
"""
import os
import shutil
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

RNG = np.random.default_rng(11)

ONNX_TYPE = {
    "float64": TensorProto.DOUBLE, "float16": TensorProto.FLOAT16, "int8": TensorProto.INT8,
    "uint8": TensorProto.UINT8, "int16": TensorProto.INT16, "uint16": TensorProto.UINT16,
    "int32": TensorProto.INT32, "uint32": TensorProto.UINT32, "int64": TensorProto.INT64,
    "uint64": TensorProto.UINT64,
}
REDUCES = ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
           "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")
# onnxruntime 1.x CPU kernels (checked: it refuses the model for the others).
ORT_REDUCE = {"float64", "float16", "int32", "int64"}
ORT_MINMAX = ORT_REDUCE | {"int8", "uint8"}
ORT_ARG = {"float64", "float16", "int8", "uint8", "int32", "int64"}


def save_model(path, op, x, attrs, opset, out_type, inits=()):
  """One node y = op(x, inits...) named 'r0'."""
  node = helper.make_node(op, ["x"] + [n for n, _ in inits], ["y"], name="r0", **attrs)
  g = helper.make_graph(
      [node], "t", [helper.make_tensor_value_info("x", ONNX_TYPE[str(x.dtype)], x.shape)],
      [helper.make_tensor_value_info("y", out_type, None)],
      [numpy_helper.from_array(a, n) for n, a in inits])
  m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
  m.ir_version = 8
  onnx.save(m, path)


def run_autodist(ck, autodist, d, name, x):
  np.save(os.path.join(d, "x.npy"), x)
  if not common.run_checked(ck, name + ": autodist infer", [
      autodist, "infer", os.path.join(d, "model.onnx"), "--data",
      "x=" + os.path.join(d, "x.npy"), "--out", "y=" + os.path.join(d, "y.npy")], timeout=120):
    return None
  return np.load(os.path.join(d, "y.npy"))


def f16_ulps(got, want):
  """Distance in float16 ulps (ordered bit patterns)."""
  def key(a):
    b = a.astype(np.float16).view(np.int16).astype(np.int64)
    return np.where(b < 0, -32768 - b, b)
  return np.abs(key(got) - key(want))


def compare(ck, name, got, want):
  """Dtype, shape, then the values by the rules of the file's docstring."""
  want = np.asarray(want)
  if not ck.check(name + ": dtype", got.dtype == want.dtype, "%s, expected %s" % (got.dtype,
                                                                                 want.dtype)):
    return
  if not ck.check(name + ": shape", got.shape == want.shape, "%s, expected %s" % (got.shape,
                                                                                 want.shape)):
    return
  if got.dtype == np.float64:
    both_nan = np.isnan(got) & np.isnan(want)
    same_inf = np.isinf(want) & (got == want)
    close = np.isclose(got, want, rtol=1e-12, atol=0) | both_nan | same_inf
    i = int(np.argmin(close.ravel())) if got.size else 0
    ck.check(name, bool(close.all()), "worst at %s: got %r, expected %r" % (
        np.unravel_index(i, got.shape), got.ravel()[i], want.ravel()[i]) if got.size else "")
  elif got.dtype == np.float16:
    u = f16_ulps(got, want)
    nan_ok = np.isnan(got) == np.isnan(want)
    ck.check(name, bool((u == 0).all() and nan_ok.all()),
             "%d of %d equal, max %d ulp" % (int((u == 0).sum()), u.size, int(u.max(initial=0))))
  else:
    bad = np.flatnonzero(got != want)
    ck.check(name, bad.size == 0, "" if bad.size == 0 else "%d differ, first at %s: %r vs %r" % (
        bad.size, np.unravel_index(bad[0], got.shape), got.ravel()[bad[0]], want.ravel()[bad[0]]))


# ---------------------------------------------------------------- numpy references

def to_int(v, dt):
  """The double v truncated toward zero into dt; NaN and below the range give
  dt's minimum, above it its maximum (autodist's and x86's conversion)."""
  info = np.iinfo(dt)
  v = np.asarray(v, dtype=np.float64)
  out = [info.min if np.isnan(a) or a <= info.min else info.max if a >= info.max else int(a)
         for a in v.ravel()]
  return np.array(out, dtype=dt).reshape(v.shape)


def np_reduce(op, x, axes, keep):
  """The ONNX definition of op over integer x (see the docstring's semantics)."""
  dt = x.dtype
  ax = tuple(range(x.ndim)) if axes is None else tuple(a % x.ndim for a in axes)
  count = int(np.prod([x.shape[a] for a in ax]))
  with np.errstate(over="ignore"):
    def wsum(v):
      return np.sum(v, axis=ax, keepdims=bool(keep), dtype=dt)
    if op == "ReduceSum":
      return wsum(x)
    if op == "ReduceMean":  # the exact mean (Python ints), truncated toward zero
      s = np.sum(x.astype(object), axis=ax, keepdims=bool(keep))
      return np.array([(abs(v) // count) * (1 if v >= 0 else -1) for v in np.ravel(s)],
                      dtype=dt).reshape(np.shape(s))
    if op == "ReduceMax":
      return np.max(x, axis=ax, keepdims=bool(keep))
    if op == "ReduceMin":
      return np.min(x, axis=ax, keepdims=bool(keep))
    if op == "ReduceProd":
      return np.prod(x, axis=ax, keepdims=bool(keep), dtype=dt)
    if op == "ReduceL1":
      return wsum(np.abs(x))
    if op == "ReduceSumSquare":
      return wsum(x * x)
    xf = x.astype(np.float64)
    if op == "ReduceL2":
      return to_int(np.sqrt(np.sum(xf * xf, axis=ax, keepdims=bool(keep))), dt)
    if op == "ReduceLogSum":
      with np.errstate(divide="ignore", invalid="ignore"):
        return to_int(np.log(np.sum(xf, axis=ax, keepdims=bool(keep))), dt)
    if op == "ReduceLogSumExp":
      e = np.sum(np.exp(x.astype(np.float64)), axis=ax, keepdims=bool(keep))
      return to_int(np.log(e), dt)
  raise ValueError(op)


def np_arg(op, x, axis, keep, last):
  f = np.argmax if op == "ArgMax" else np.argmin
  if last:
    r = x.shape[axis] - 1 - f(np.flip(x, axis), axis=axis)
  else:
    r = f(x, axis=axis)
  return (np.expand_dims(r, axis) if keep else r).astype(np.int64)


def np_hardmax(x, axis):
  y = np.zeros_like(x)
  np.put_along_axis(y, np.expand_dims(np.argmax(x, axis=axis), axis), 1, axis=axis)
  return y


# ---------------------------------------------------------------- data

def data_for(op, dt, shape):
  """Values that keep op's result in range and meaningful for dt."""
  if dt in ("float64", "float16"):
    if op in ("ReduceLogSum", "ReduceProd"):
      return RNG.uniform(0.3, 1.7, size=shape).astype(dt)
    return RNG.uniform(-2.0, 2.0, size=shape).astype(dt)
  lo = 0 if dt.startswith("u") else -1
  if op == "ReduceLogSum":
    return RNG.integers(1, 40, size=shape).astype(dt)
  if op == "ReduceLogSumExp":
    return RNG.integers(-6 if lo else 0, 7, size=shape).astype(dt)
  if op == "ReduceProd":
    return RNG.integers(-3 if lo else 0, 4, size=shape).astype(dt)
  hi = 100 if dt in ("int8", "uint8") else 1000
  return RNG.integers(lo * hi, hi, size=shape).astype(dt)


def wrap_data(dt, shape):
  """Integers near the dtype's limits, whose sums, squares and products wrap."""
  info = np.iinfo(dt)
  lo = info.min // 2 if info.min < 0 else info.max // 4
  return RNG.integers(lo, info.max // 2, size=shape, dtype=dt, endpoint=True)


# ---------------------------------------------------------------- cases

class Runner:
  def __init__(self, ck, autodist, work):
    self.ck, self.autodist, self.work, self.n = ck, autodist, work, 0

  def case(self, name, op, x, attrs, opset, ref, inits=()):
    """ref: "ort" or an array (numpy's result)."""
    self.n += 1
    d = os.path.join(self.work, "%03d" % self.n)
    os.makedirs(d)
    out_type = TensorProto.INT64 if op in ("ArgMax", "ArgMin") else ONNX_TYPE[str(x.dtype)]
    save_model(os.path.join(d, "model.onnx"), op, x, attrs, opset, out_type, inits)
    if isinstance(ref, str):
      try:
        ref = common.ort_run(os.path.join(d, "model.onnx"), {"x": x})["y"]
      except Exception as e:  # noqa: BLE001 - the reference must run
        return self.ck.check(name + ": onnxruntime runs", False, str(e).splitlines()[0])
    got = run_autodist(self.ck, self.autodist, d, name, x)
    if got is not None:
      compare(self.ck, name, got, ref)

  def refused(self, name, op, x, attrs, opset, want):
    """The model must fail at compile time: exit 2, naming node r0 and `want`."""
    self.n += 1
    d = os.path.join(self.work, "%03d" % self.n)
    os.makedirs(d)
    out_type = TensorProto.INT64 if op in ("ArgMax", "ArgMin") else ONNX_TYPE[str(x.dtype)]
    save_model(os.path.join(d, "model.onnx"), op, x, attrs, opset, out_type)
    np.save(os.path.join(d, "x.npy"), x)
    rc, out = common.run([self.autodist, "infer", os.path.join(d, "model.onnx"), "--data",
                          "x=" + os.path.join(d, "x.npy"), "--out",
                          "y=" + os.path.join(d, "y.npy")], timeout=120)
    ok = rc == 2 and "node 'r0' (%s)" % op in out and want in out
    self.ck.check(name + ": refused", ok, "exit %d: %s" % (rc, out.strip().splitlines()[-1:]))


def reduce_cases(r):
  axes_list = (([1], 1), ([0, 2], 0), ([-1], 0), (None, 1), (None, 0))
  shape = (3, 4, 5)
  for op in REDUCES:
    dts = ["float64", "float16", "int32", "int64", "uint32", "uint64"]
    if op in ("ReduceMax", "ReduceMin"):
      dts += ["int8", "uint8"]
    for dt in dts:
      x = data_for(op, dt, shape)
      ort_ok = dt in (ORT_MINMAX if op in ("ReduceMax", "ReduceMin") else ORT_REDUCE)
      if op == "ReduceLogSumExp" and dt not in ("float64", "float16"):
        ort_ok = False  # see the docstring
      for axes, keep in axes_list:
        name = "%s %s axes=%s keepdims=%d" % (op, dt, axes, keep)
        ref = "ort" if ort_ok else np_reduce(op, x, axes, keep)
        if op == "ReduceSum":
          # Opset 11: attribute; opset 13: constant input (none: reduce all).
          attrs = {"keepdims": keep}
          if axes is not None:
            attrs["axes"] = axes
          r.case(name + " opset11", op, x, attrs, 11, ref)
          inits = () if axes is None else (("axes", np.array(axes, dtype=np.int64)),)
          r.case(name + " opset13", op, x, {"keepdims": keep}, 13, ref, inits)
        else:
          attrs = {"keepdims": keep}
          if axes is not None:
            attrs["axes"] = axes
          r.case(name, op, x, attrs, 13, ref)
  # noop_with_empty_axes: an identity.
  for dt in ("float64", "int64", "uint32"):
    x = data_for("ReduceSum", dt, shape)
    r.case("ReduceSum %s noop_with_empty_axes" % dt, "ReduceSum", x,
           {"noop_with_empty_axes": 1}, 13, x)


def wrap_cases(r):
  """Integers near the dtype's limits: Sum, Prod, SumSquare and L1 wrap like
  numpy's with the dtype; Mean is the exact mean, L2 and LogSum come from the
  double sum. numpy is the reference: onnxruntime's results under overflow
  follow no rule (int32 Prod saturates to INT_MIN, SumSquare to INT_MAX)."""
  for dt in ("int8", "int32", "int64", "uint32", "uint64"):
    x = wrap_data(dt, (4, 6))
    ops = ("ReduceMax", "ReduceMin") if dt == "int8" else (
        "ReduceSum", "ReduceMean", "ReduceProd", "ReduceSumSquare", "ReduceL1", "ReduceL2",
        "ReduceLogSum")
    for op in ops:
      r.case("%s %s near the limits" % (op, dt), op, x, {"axes": [1], "keepdims": 0},
             11 if op == "ReduceSum" else 13, np_reduce(op, x, [1], 0))


def float_edge_cases(r):
  """float64 beyond exp's range (onnxruntime subtracts the maximum, as
  autodist does), NaN and infinities, float16 sums that need rounding."""
  big = RNG.uniform(700.0, 1000.0, size=(3, 5))
  big[1] *= -1.0
  r.case("ReduceLogSumExp float64 |x| > 709", "ReduceLogSumExp", big, {"axes": [1], "keepdims": 0},
         13, "ort")
  e = np.array([[1.0, np.nan, 3.0], [np.inf, 1.0, 2.0], [-np.inf, -np.inf, -np.inf],
                [np.inf, np.inf, 1.0], [-np.inf, 1.0, 2.0]])
  # onnxruntime's ReduceMax/Min skip a NaN; autodist propagates it like
  # numpy (and like its float32 kernels).
  for op, f in (("ReduceMax", np.max), ("ReduceMin", np.min)):
    r.case("%s float64 nan/inf" % op, op, e, {"axes": [1], "keepdims": 1}, 13,
           f(e, axis=1, keepdims=True))
  for op in ("ReduceLogSumExp", "ReduceSum", "ReduceL1", "ReduceProd"):
    r.case("%s float64 nan/inf" % op, op, e, {"axes": [1], "keepdims": 1}, 11, "ort")
  h = RNG.uniform(0.0, 100.0, size=(2, 300)).astype(np.float16)
  for op in ("ReduceSum", "ReduceMean", "ReduceL2", "ReduceSumSquare"):
    r.case("%s float16 long rows" % op, op, h, {"axes": [1], "keepdims": 0}, 11, "ort")


def empty_cases(r):
  """A reduction over an axis of length 0 gives the reduction's identity
  (ONNX): 0 for sums, 1 for Prod, the lowest value for Max (-inf, or the
  dtype's minimum), log(0) = -inf for LogSumExp, NaN for a float Mean. An
  integer Mean of no elements is refused."""
  x = np.zeros((2, 0, 3), np.float64)
  want = {"ReduceSum": 0.0, "ReduceProd": 1.0, "ReduceMax": -np.inf, "ReduceMin": np.inf,
          "ReduceMean": np.nan, "ReduceLogSumExp": -np.inf, "ReduceL2": 0.0}
  for op, v in want.items():
    r.case("%s float64 empty" % op, op, x, {"axes": [1], "keepdims": 0}, 11, np.full((2, 3), v))
  xi = np.zeros((2, 0, 3), np.int32)
  want = {"ReduceSum": 0, "ReduceProd": 1, "ReduceMax": -2**31, "ReduceMin": 2**31 - 1}
  for op, v in want.items():
    r.case("%s int32 empty" % op, op, xi, {"axes": [1], "keepdims": 0}, 11,
           np.full((2, 3), v, np.int32))
  r.refused("ReduceMean int32 empty", "ReduceMean", xi, {"axes": [1]}, 13,
            "mean of no elements")


def arg_cases(r):
  """Many ties, so that select_last_index matters."""
  for dt in ("float64", "float16", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64",
             "uint64"):
    x = RNG.integers(0, 4, size=(3, 5, 4)).astype(dt)
    if dt in ("int64", "uint64"):
      x = x + np.array(2**62, dtype=dt)  # beyond double's precision: ties must stay exact
      x[0, 0, 0] += 1
    for op in ("ArgMax", "ArgMin"):
      for axis in (0, 1, -1):
        for keep in (0, 1):
          for last in (0, 1):
            ref = "ort" if dt in ORT_ARG else np_arg(op, x, axis, keep, last)
            r.case("%s %s axis=%d keepdims=%d last=%d" % (op, dt, axis, keep, last), op, x,
                   {"axis": axis, "keepdims": keep, "select_last_index": last}, 13, ref)
  # A NaN wins, as in numpy (onnxruntime skips it).
  xn = np.array([[1.0, np.nan, 3.0, np.nan], [2.0, 2.0, -1.0, 5.0]])
  for op in ("ArgMax", "ArgMin"):
    r.case("%s float64 nan" % op, op, xn, {"axis": 1}, 13, np_arg(op, xn, 1, 1, 0))


def hardmax_cases(r):
  for opset in (11, 13):
    for axis in (0, 1, -1):
      x = RNG.integers(0, 3, size=(2, 3, 4)).astype(np.float64)
      ref = np_hardmax(x.reshape(int(np.prod(x.shape[:axis % 3])), -1), 1).reshape(x.shape) \
          if opset == 11 else np_hardmax(x, axis)
      r.case("Hardmax float64 opset%d axis=%d" % (opset, axis), "Hardmax", x, {"axis": axis},
             opset, ref)
      r.case("Hardmax float16 opset%d axis=%d" % (opset, axis), "Hardmax", x.astype(np.float16),
             {"axis": axis}, opset, "ort")


def refusal_cases(r):
  x8 = RNG.integers(-5, 5, size=(2, 3)).astype(np.int8)
  r.refused("ReduceSum int8", "ReduceSum", x8, {}, 13, "is int8; ReduceSum supports")
  r.refused("ReduceMax int8 at opset 11", "ReduceMax", x8, {"axes": [1]}, 11,
            "is int8; ReduceMax supports")
  r.refused("ReduceL2 int16", "ReduceL2", x8.astype(np.int16), {"axes": [1]}, 13,
            "is int16; ReduceL2 supports")
  r.refused("Hardmax int32", "Hardmax", x8.astype(np.int32), {}, 13, "is int32; Hardmax supports")
  r.refused("ReduceSum opset 13 axes attribute", "ReduceSum", x8.astype(np.float64),
            {"axes": [1]}, 13, "axes as an input from opset 13")


def bf16_refusal(ck, autodist, work):
  """A bfloat16 input is refused while shapes are inferred, before any data is
  read (the file fed is float32)."""
  d = os.path.join(work, "bf16")
  os.makedirs(d)
  for op, attrs in (("ReduceSum", {}), ("ReduceMax", {"axes": [0]}), ("ArgMax", {})):
    node = helper.make_node(op, ["x"], ["y"], name="r0", **attrs)
    out_t = TensorProto.INT64 if op == "ArgMax" else TensorProto.BFLOAT16
    g = helper.make_graph([node], "t", [helper.make_tensor_value_info("x", TensorProto.BFLOAT16,
                                                                      (2, 3))],
                          [helper.make_tensor_value_info("y", out_t, None)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, os.path.join(d, "m.onnx"))
    np.save(os.path.join(d, "x.npy"), np.zeros((2, 3), np.float32))
    rc, out = common.run([autodist, "infer", os.path.join(d, "m.onnx"),
                          "--data", "x=" + os.path.join(d, "x.npy"),
                          "--out", "y=" + os.path.join(d, "y.npy")])
    ok = rc == 2 and "node 'r0' (%s)" % op in out and "bfloat16" in out
    ck.check("%s bfloat16: refused" % op, ok, "exit %d: %s" % (rc, out.strip().splitlines()[-1:]))


def main():
  ck = common.Checks()
  autodist = common.autodist_path()
  if not ck.check("autodist binary exists", os.access(autodist, os.X_OK), autodist):
    return ck.close()
  only = sys.argv[1] if len(sys.argv) > 1 else ""
  work = common.tmpdir("reduce-dt")
  r = Runner(ck, autodist, work)
  for fn in (reduce_cases, wrap_cases, float_edge_cases, empty_cases, arg_cases, hardmax_cases,
             refusal_cases):
    if only in fn.__name__:
      fn(r)
  if "bf16" in only or not only:
    bf16_refusal(ck, autodist, work)
  if ck.failed:
    print("work folder kept: %s" % work)
  else:
    shutil.rmtree(work, ignore_errors=True)
  return ck.close()


if __name__ == "__main__":
  sys.exit(main())
