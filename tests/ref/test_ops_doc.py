#!/usr/bin/python3
"""`autodist inspect --ops` and docs/ops.md.

1. The list: one line per op, sorted, each with opset ranges inside the
   AD_OPSET_MIN..AD_OPSET_MAX the loader accepts and the dtypes of its data;
   internal ops (domain "ad", such as SoftmaxGrad) are not listed; `--ops` with a model is a usage error
   (exit 2).
2. docs/ops.md is what scripts/gen_ops_doc.py makes of that list (after
   adding an op, regenerate it: /usr/bin/python3 scripts/gen_ops_doc.py).

Run by ctest with AUTODIST (the built CLI) and AD_SRC (the source tree) set.
"""
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.environ.get("AD_SRC") or os.path.abspath(os.path.join(HERE, "..", ".."))
AUTODIST = os.environ.get("AUTODIST") or os.path.join(SRC, "build", "autodist")

passed, failed = 0, 0


def check(ok, what):
    global passed, failed
    print("%s %s" % ("ok  " if ok else "FAIL", what))
    passed, failed = passed + bool(ok), failed + (not ok)


r = subprocess.run([AUTODIST, "inspect", "--ops"], capture_output=True, text=True)
check(r.returncode == 0 and not r.stderr, "inspect --ops exits 0: %d %s" % (r.returncode, r.stderr))
lines = [l for l in r.stdout.splitlines() if not l.startswith("#")]
names = [l.split()[0] for l in lines if l.strip()]
check(len(names) > 20, "inspect --ops lists %d ops" % len(names))
check(names == sorted(names) and len(set(names)) == len(names), "ops sorted, each once")
DT = r"(float|int|uint|bool|float16|bfloat16|float32|float64|int8|int16|int32|int64|uint8|" \
     r"uint16|uint32|uint64)"
bad = [l for l in lines if not re.fullmatch(
    r"[A-Za-z]\w* +(\d+-\d+)( \d+-\d+)* +: %s( %s)*( \((input \d+|output)\))?" % (DT, DT), l)]
check(not bad, "every line is 'Op  LO-HI... : dtypes': %s" % bad[:3])
# Each dtype once per line; the classes are written as such.
dups = [l for l in lines if len(set(l.split(":")[1].split())) != len(l.split(":")[1].split())]
check(not dups, "no dtype twice on a line: %s" % dups[:3])
check(any(l.split()[0] == "Conv" and l.endswith(": float32") for l in lines),
      "Conv computes on float32 only")
check(any(l.split()[0] == "Add" and l.endswith(": float int uint") for l in lines),
      "Add computes on every numeric dtype")
# The opsets a model may import: AD_OPSET_MIN..AD_OPSET_MAX of compiler/op.h.
op_h = open(os.path.join(SRC, "compiler", "op.h")).read()
omin, omax = (int(re.search(r"#define AD_OPSET_%s (\d+)" % m, op_h).group(1))
              for m in ("MIN", "MAX"))
ranges = [tuple(map(int, x.split("-"))) for l in lines for x in l.split(":")[0].split()[1:]]
check(all(omin <= lo <= hi <= omax for lo, hi in ranges),
      "opset ranges inside %d-%d" % (omin, omax))
check("Add" in names and "Softmax" in names, "Add and Softmax listed")
check("SoftmaxGrad" not in names and "LogSoftmaxGrad" not in names, "internal ops not listed")

r = subprocess.run([AUTODIST, "inspect", "--ops", "m.onnx"], capture_output=True, text=True)
want = "autodist: error: --ops takes no model (got 'm.onnx')\nusage: autodist inspect --ops"
check(r.returncode == 2 and r.stderr.strip() == want, "inspect --ops m.onnx: %d %s"
      % (r.returncode, r.stderr.strip()))

rc = subprocess.run([sys.executable, os.path.join(SRC, "scripts", "gen_ops_doc.py"), "--check",
                     AUTODIST]).returncode
check(rc == 0, "docs/ops.md in sync with inspect --ops")
print("%d passed, %d failed" % (passed, failed))
sys.exit(1 if failed else 0)
