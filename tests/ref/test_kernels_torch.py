"""tests/ref/test_kernels_torch.py: the runtime kernels against PyTorch itself.

The kernel sources (runtime/kernels*.c) are compiled with gcc into a shared
object in a temporary directory and loaded with ctypes; each kernel is then
compared with the PyTorch function it stands for (forward values, and gradients
through autograd) on random inputs, rtol 1e-4:
  conv2d fwd / bwd_data / bwd_weight   F.conv2d (asymmetric padding via F.pad)
  maxpool fwd / bwd (2-D, 3-D)         F.max_pool2d/3d (padding, dilation, ceil_mode, ties)
  avgpool fwd / bwd (2-D, 3-D)         F.avg_pool2d/3d (count_include_pad both ways)
  softmax / log_softmax fwd / bwd      torch.softmax / torch.log_softmax on any axis
  xent fwd / bwd                       F.cross_entropy(reduction='sum') * scale
The source dir is $AD_SRC (set by ctest) or the repo root above this file.

`test_kernels_torch.py --bench` instead times the conv and pool kernels against
PyTorch (one thread each) on the benchmark CNN's shapes; it is not a test. It
reports thread CPU time (best of 3), so that other jobs on a shared machine
count less.
"""
import ctypes
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

torch.set_num_threads(1)
SRC = os.environ.get("AD_SRC") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", ".."))
RTOL, ATOL = 1e-4, 1e-5
failures = 0


def build(tmp):
    # kernels_random.c (Dropout's masks, checked by test_dropout.py) asks the
    # communication layer for the worker's rank: it does not link alone.
    srcs = sorted(os.path.join(SRC, "runtime", f) for f in os.listdir(os.path.join(SRC, "runtime"))
                  if f.startswith("kernels") and f.endswith(".c") and f != "kernels_random.c")
    so = os.path.join(tmp, "libadkernels.so")
    cmd = ["gcc", "-O2", "-std=gnu11", "-shared", "-fPIC", "-o", so, *srcs, "-I" + SRC,
           "-I/usr/include/x86_64-linux-gnu/openblas-pthread", "-lopenblas", "-lm"]
    subprocess.run(cmd, check=True)
    lib = ctypes.CDLL(so)
    try:  # one BLAS thread, as the worker runs it
        lib.openblas_set_num_threads(1)
    except AttributeError:
        pass
    return lib


def ptr(a):
    if a is None:
        return None
    assert a.flags.c_contiguous
    return a.ctypes.data_as(ctypes.c_void_p)


def params(vals):
    return np.ascontiguousarray(np.array(vals, dtype=np.int64))


def fbits(f):
    return int(np.array([f], dtype=np.float32).view(np.uint32)[0])


def call(lib, name, p, *bufs):
    getattr(lib, name)(ptr(p), *[ptr(b) for b in bufs])


def check(what, desc, got, want):
    global failures
    want = want.detach().numpy() if isinstance(want, torch.Tensor) else np.asarray(want)
    got = np.asarray(got).reshape(want.shape)
    # Sums of many products cancel: the absolute slack scales with the tensor's magnitude.
    finite = np.abs(want[np.isfinite(want)])
    atol = ATOL * max(1.0, float(finite.max()) if finite.size else 1.0)
    ok = np.isclose(got, want, rtol=RTOL, atol=atol, equal_nan=True)
    if not ok.all():
        err = np.where(ok, 0.0, np.abs(got - want))
        i = np.unravel_index(np.nanargmax(err), err.shape)
        print(f"FAIL {what} [{desc}]: at {i} got {got[i]!r}, want {want[i]!r}")
        failures += 1


def t(a, grad=False):
    return torch.tensor(a, requires_grad=grad)


def conv_case(lib, rng, n, c, h, w, m, kh, kw, s, pads, d, g):
    pt, pl, pb, pr = pads
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((m, c // g, kh, kw)).astype(np.float32)
    b = rng.standard_normal(m).astype(np.float32)
    xt, wtt, bt = t(x, True), t(wt, True), t(b)
    yt = F.conv2d(F.pad(xt, (pl, pr, pt, pb)), wtt, bt, stride=s, dilation=d, groups=g)
    oh, ow = yt.shape[2], yt.shape[3]
    dy = rng.standard_normal(yt.shape).astype(np.float32)
    dxt, dwt = torch.autograd.grad(yt, (xt, wtt), t(dy))
    p = params([n, c, h, w, m, kh, kw, oh, ow, s[0], s[1], pt, pl, d[0], d[1], g])
    ws = np.zeros(max(1, lib.ad_k_conv2d_workspace(ptr(p))), dtype=np.float32)
    y = np.full(yt.shape, np.nan, dtype=np.float32)
    dx = np.full(x.shape, np.nan, dtype=np.float32)
    dw = np.full(wt.shape, np.nan, dtype=np.float32)
    desc = f"x{x.shape} w{wt.shape} s{s} pads{pads} d{d} g{g}"
    call(lib, "ad_k_conv2d_fwd", p, x, wt, b, y, ws)
    check("conv2d_fwd", desc, y, yt)
    call(lib, "ad_k_conv2d_bwd_data", p, dy, wt, dx, ws)
    check("conv2d_bwd_data", desc, dx, dxt)
    call(lib, "ad_k_conv2d_bwd_weight", p, x, dy, dw, ws)
    check("conv2d_bwd_weight", desc, dw, dwt)


def test_conv(lib, rng):
    lib.ad_k_conv2d_workspace.restype = ctypes.c_int64
    for _ in range(60):
        g = int(rng.integers(1, 4))
        k = (int(rng.integers(1, 5)), int(rng.integers(1, 5)))
        d = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
        pads = tuple(int(v) for v in rng.integers(0, 3, 4))
        h, w = int(rng.integers(1, 12)), int(rng.integers(1, 12))
        if (h + pads[0] + pads[2] < d[0] * (k[0] - 1) + 1
                or w + pads[1] + pads[3] < d[1] * (k[1] - 1) + 1):
            continue
        conv_case(lib, rng, int(rng.integers(1, 4)), g * int(rng.integers(1, 4)), h, w,
                  g * int(rng.integers(1, 5)), k[0], k[1],
                  (int(rng.integers(1, 4)), int(rng.integers(1, 4))), pads, d, g)
    # Pointwise, a large batch, and the benchmark CNN's layers (3x3 'same' and 5x5 'valid').
    conv_case(lib, rng, 3, 8, 6, 5, 12, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), 2)
    conv_case(lib, rng, 40, 3, 7, 7, 5, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1)
    conv_case(lib, rng, 8, 1, 28, 28, 32, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1)
    conv_case(lib, rng, 8, 32, 14, 14, 64, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1)
    conv_case(lib, rng, 4, 1, 28, 28, 32, 5, 5, (1, 1), (0, 0, 0, 0), (1, 1), 1)


def has_empty_window(n, k, s, pad, d, ceil):
    """Whether some window (along one axis) covers only padding. ONNX forbids
    that; PyTorch then scatters the gradient outside the plane, so skip it."""
    span = n + 2 * pad - d * (k - 1) - 1
    out = (span + (s - 1 if ceil else 0)) // s + 1
    if ceil and (out - 1) * s >= n + pad:
        out -= 1
    return any(all(not 0 <= o * s - pad + j * d < n for j in range(k)) for o in range(out))


def pool_params(n, c, dims, out, k, s, pad, d, inc):
    """The pooling kernels' block (runtime/kernels.h) for 2 or 3 spatial axes."""
    def three(v, one):
        return [one] * (3 - len(v)) + list(v)
    return params([n, c, *three(dims, 1), *three(out, 1), *three(k, 1), *three(s, 1),
                   *three(pad, 0), *three(d, 1), inc, 0, 0])


def test_pool(lib, rng):
    for i in range(200):
        sp = 2 if i < 80 else 3
        n, c = int(rng.integers(1, 3)), int(rng.integers(1, 4))
        k = tuple(int(rng.integers(1, 4)) for _ in range(sp))
        s = tuple(int(rng.integers(1, 4)) for _ in range(sp))
        d = tuple(int(rng.integers(1, 3)) for _ in range(sp))
        pad = tuple(int(rng.integers(0, k[j] // 2 + 1)) for j in range(sp))
        ceil = bool(rng.integers(0, 2))
        if i < 8:
            k, s, d, pad, ceil = (2, 2), (2, 2), (1, 1), (0, 0), False
        if sp == 3 and i % 2:  # undilated, so that avg_pool3d compares too
            d = (1, 1, 1)
        dims = tuple(int(rng.integers(1, 11 if sp == 2 else 6)) for _ in range(sp))
        if any(dims[j] + 2 * pad[j] < d[j] * (k[j] - 1) + 1 for j in range(sp)):
            continue
        if any(has_empty_window(dims[j], k[j], s[j], pad[j], d[j], ceil) for j in range(sp)):
            continue
        # Few distinct values: ties are common, and the first maximum must win.
        x = (rng.integers(-3, 4, (n, c, *dims)) * 0.5).astype(np.float32)
        desc = f"x{x.shape} k{k} s{s} p{pad} d{d} ceil{ceil}"
        xt = t(x, True)
        max_pool = F.max_pool2d if sp == 2 else F.max_pool3d
        avg_pool = F.avg_pool2d if sp == 2 else F.avg_pool3d
        yt = max_pool(xt, k, s, pad, d, ceil_mode=ceil)
        out = tuple(yt.shape[2:])
        dy = rng.standard_normal(yt.shape).astype(np.float32)
        (dxt,) = torch.autograd.grad(yt, xt, t(dy))
        y = np.full(yt.shape, np.nan, dtype=np.float32)
        dx = np.full(x.shape, np.nan, dtype=np.float32)
        for inc in (0, 1):
            p = pool_params(n, c, dims, out, k, s, pad, d, inc)
            call(lib, "ad_k_maxpool_fwd", p, x, y)
            check("maxpool%dd_fwd" % sp, desc, y, yt)
            call(lib, "ad_k_maxpool_bwd", p, x, dy, dx)
            check("maxpool%dd_bwd" % sp, desc, dx, dxt)
        # PyTorch's avg pool has no dilation; with count_include_pad its ceil_mode
        # windows are clipped to the padded image, which the kernel's implied
        # padding does not model, so that combination is not compared.
        # avg_pool3d also refuses an input smaller than the window before padding.
        if d != (1,) * sp or (sp == 3 and any(dims[j] < k[j] for j in range(sp))):
            continue
        for inc in (0, 1):
            if inc and ceil:
                continue
            yt = avg_pool(xt, k, s, pad, ceil_mode=ceil, count_include_pad=bool(inc))
            out = tuple(yt.shape[2:])
            dy = rng.standard_normal(yt.shape).astype(np.float32)
            (dxt,) = torch.autograd.grad(yt, xt, t(dy))
            y = np.full(yt.shape, np.nan, dtype=np.float32)
            p = pool_params(n, c, dims, out, k, s, pad, (1,) * sp, inc)
            call(lib, "ad_k_avgpool_fwd", p, x, y)
            check("avgpool%dd_fwd" % sp, desc + f" inc{inc}", y, yt)
            call(lib, "ad_k_avgpool_bwd", p, dy, dx)
            check("avgpool%dd_bwd" % sp, desc + f" inc{inc}", dx, dxt)


def test_softmax(lib, rng):
    for shape, axis in [((64, 10), 1), ((3, 7, 5), 1), ((2, 130, 3), 2), ((4, 5, 6, 7), 0),
                        ((1,), 0), ((2, 3, 100), 1)]:
        x = (rng.standard_normal(shape) * 30).astype(np.float32)
        dy = rng.standard_normal(shape).astype(np.float32)
        outer = int(np.prod(shape[:axis])); inner = int(np.prod(shape[axis + 1:]))
        p = params([outer, shape[axis], inner])
        desc = f"{shape} axis {axis}"
        for name, fn in (("softmax", torch.softmax), ("logsoftmax", torch.log_softmax)):
            xt = t(x, True)
            yt = fn(xt, axis)
            (dxt,) = torch.autograd.grad(yt, xt, t(dy))
            y = np.full(shape, np.nan, dtype=np.float32)
            dx = np.full(shape, np.nan, dtype=np.float32)
            call(lib, f"ad_k_{name}_fwd", p, x, y)
            check(f"{name}_fwd", desc, y, yt)
            call(lib, f"ad_k_{name}_bwd", p, y, dy, dx)
            check(f"{name}_bwd", desc, dx, dxt)


def test_xent(lib, rng):
    for n, c in ((64, 10), (7, 1000), (1, 2)):
        x = (rng.standard_normal((n, c)) * 20).astype(np.float32)
        label = rng.integers(0, c, n).astype(np.int64)
        scale, dl = 1.0 / 64, 0.75
        xt = t(x, True)
        lt = F.cross_entropy(xt, torch.tensor(label), reduction="sum") * scale
        (dxt,) = torch.autograd.grad(lt, xt, torch.tensor(dl))
        p = params([n, c, fbits(scale)])
        loss = np.full(1, np.nan, dtype=np.float32)
        dx = np.full(x.shape, np.nan, dtype=np.float32)
        dloss = np.array([dl], dtype=np.float32)
        call(lib, "ad_k_xent_fwd", p, x, label, loss)
        check("xent_fwd", f"{n}x{c}", loss, lt.reshape(1))
        call(lib, "ad_k_xent_bwd", p, x, label, dloss, dx)
        check("xent_bwd", f"{n}x{c}", dx, dxt)


def bench(lib):
    """Times conv / pool kernels against PyTorch on the benchmark CNN's shapes."""
    lib.ad_k_conv2d_workspace.restype = ctypes.c_int64
    rng = np.random.default_rng(0)

    def timeit(f, reps=20):
        f()
        best = float("inf")
        for _ in range(3):
            t0 = time.thread_time()
            for _ in range(reps):
                f()
            best = min(best, (time.thread_time() - t0) / reps)
        return best * 1e3

    for n in (64, 32):
        for (c, h, m) in ((1, 28, 32), (32, 14, 64)):
            x = rng.standard_normal((n, c, h, h)).astype(np.float32)
            wt = rng.standard_normal((m, c, 3, 3)).astype(np.float32)
            b = rng.standard_normal(m).astype(np.float32)
            dy = rng.standard_normal((n, m, h, h)).astype(np.float32)
            p = params([n, c, h, h, m, 3, 3, h, h, 1, 1, 1, 1, 1, 1, 1])
            ws = np.zeros(max(1, lib.ad_k_conv2d_workspace(ptr(p))), dtype=np.float32)
            y = np.empty_like(dy); dx = np.empty_like(x); dw = np.empty_like(wt)
            ours = [timeit(lambda: call(lib, "ad_k_conv2d_fwd", p, x, wt, b, y, ws)),
                    timeit(lambda: call(lib, "ad_k_conv2d_bwd_data", p, dy, wt, dx, ws)),
                    timeit(lambda: call(lib, "ad_k_conv2d_bwd_weight", p, x, dy, dw, ws))]
            xt, wtt, bt, dyt = t(x, True), t(wt, True), t(b, True), t(dy)
            with torch.no_grad():
                tf = timeit(lambda: F.conv2d(xt, wtt, bt, padding=1))
            # PyTorch's backward computes dx, dw and db together.
            def tb():
                yt = F.conv2d(xt, wtt, bt, padding=1)
                torch.autograd.grad(yt, (xt, wtt, bt), dyt)
            tfb = timeit(tb)
            print(f"conv N{n} C{c} {h}x{h} M{m} 3x3: ours fwd {ours[0]:.3f} ms, "
                  f"bwd_data {ours[1]:.3f}, "
                  f"bwd_weight {ours[2]:.3f} (fwd+bwd {sum(ours):.3f}); torch fwd {tf:.3f} ms, "
                  f"fwd+bwd {tfb:.3f}")
            xp = rng.standard_normal((n, m, h, h)).astype(np.float32)
            yp = np.empty((n, m, h // 2, h // 2), dtype=np.float32)
            dyp = rng.standard_normal(yp.shape).astype(np.float32)
            dxp = np.empty_like(xp)
            pp = pool_params(n, m, (h, h), (h // 2, h // 2), (2, 2), (2, 2), (0, 0), (1, 1), 0)
            of = timeit(lambda: call(lib, "ad_k_maxpool_fwd", pp, xp, yp))
            ob = timeit(lambda: call(lib, "ad_k_maxpool_bwd", pp, xp, dyp, dxp))
            xpt = t(xp, True)
            with torch.no_grad():
                tpf = timeit(lambda: F.max_pool2d(xpt, 2))
            def tpb():
                yt = F.max_pool2d(xpt, 2)
                torch.autograd.grad(yt, xpt, t(dyp))
            tpfb = timeit(tpb)
            print(f"maxpool N{n} C{m} {h}x{h}: ours fwd {of:.3f} ms, bwd {ob:.3f}; "
                  f"torch fwd {tpf:.3f}, "
                  f"fwd+bwd {tpfb:.3f}")


def main():
    with tempfile.TemporaryDirectory() as tmp:
        lib = build(tmp)
        if "--bench" in sys.argv:
            bench(lib)
            return 0
        rng = np.random.default_rng(1234)
        test_conv(lib, rng)
        test_pool(lib, rng)
        test_softmax(lib, rng)
        test_xent(lib, rng)
    if failures:
        print(f"test_kernels_torch: {failures} failure(s)")
        return 1
    print("test_kernels_torch: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
