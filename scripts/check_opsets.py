#!/usr/bin/python3
"""Audits the opsets autodist claims for each ONNX op against ONNX's schemas.

    /usr/bin/python3 scripts/check_opsets.py [AUTODIST]    (default build/autodist)

For every op that `autodist inspect --ops` lists, prints the since_versions of
its schemas (Debian's python3-onnx, onnx.defs) and the opset ranges autodist
accepts, and flags a range that
  - starts before the op's first schema (the op does not exist there), or
  - covers an opset whose schema version is one autodist does not implement:
    OLD_FORMS below, the audit's record of the older schema versions that
    differ from what the op files implement (attributes that became inputs,
    other defaults, legacy broadcasting, ...).
A schema version not in OLD_FORMS is one whose semantics autodist implements;
SUPERSET notes the older versions accepted because autodist's form is a
superset of theirs (every model valid there means the same to autodist) or
because an op file implements that old form.
Exit status 1 when anything is flagged. No test runs this; it documents the
audit and is rerun after changing an op's min_opset/max_opset.
"""
import os
import re
import subprocess
import sys
from collections import defaultdict

import onnx.defs

HERE = os.path.dirname(os.path.abspath(__file__))

LEGACY_BCAST = "legacy broadcast/axis attributes (no numpy broadcasting)"
CONSUMED = "consumed_inputs attribute (legacy)"

# op -> {schema since_version: why autodist does not implement it}
OLD_FORMS = {
    "Abs": {1: CONSUMED}, "Neg": {1: CONSUMED}, "Exp": {1: CONSUMED}, "Log": {1: CONSUMED},
    "Sqrt": {1: CONSUMED}, "Floor": {1: CONSUMED}, "Ceil": {1: CONSUMED},
    "Reciprocal": {1: CONSUMED}, "Relu": {1: CONSUMED}, "Sigmoid": {1: CONSUMED},
    "Tanh": {1: CONSUMED}, "Elu": {1: CONSUMED}, "LeakyRelu": {1: CONSUMED},
    "HardSigmoid": {1: CONSUMED}, "InstanceNormalization": {1: CONSUMED},
    "PRelu": {1: CONSUMED, 6: "slope of size 1 or X's shape (numpy unidirectional from 7)"},
    "Selu": {1: CONSUMED + "; other default alpha/gamma"},
    "Max": {1: CONSUMED}, "Min": {1: CONSUMED}, "Sum": {1: CONSUMED}, "Mean": {1: CONSUMED},
    "Add": {1: LEGACY_BCAST, 6: LEGACY_BCAST}, "Sub": {1: LEGACY_BCAST, 6: LEGACY_BCAST},
    "Mul": {1: LEGACY_BCAST, 6: LEGACY_BCAST}, "Div": {1: LEGACY_BCAST, 6: LEGACY_BCAST},
    "Pow": {1: LEGACY_BCAST}, "Equal": {1: LEGACY_BCAST}, "Less": {1: LEGACY_BCAST},
    "Greater": {1: LEGACY_BCAST}, "And": {1: LEGACY_BCAST}, "Or": {1: LEGACY_BCAST},
    "Xor": {1: LEGACY_BCAST},
    "Cast": {1: "'to' is a string attribute"},
    "Clip": {1: CONSUMED + "; min/max without defaults"},
    "Reshape": {1: "shape is an attribute (an input from 5)"},
    "Pad": {1: "paddings attribute (pads from 2)"},
    "Concat": {1: "axis optional with default 1 (required from 4)"},
    "Split": {1: "split may be a second input of the data's type"},
    "Tile": {1: "tiles and axis inputs (repeats from 6)"},
    "Dropout": {1: CONSUMED + "; is_test defaults to 0 (training)",
                6: "is_test defaults to 0 (training)"},
    "BatchNormalization": {1: CONSUMED + "; is_test, spatial"},
    "LpPool": {1: "p is a float attribute (int from 2)"},
}

# op -> {since_version: why accepting it is right though the schema differs}
SUPERSET = {
    "Clip": {6: "own entry (elementwise.c): min/max attributes"},
    "Pad": {2: "own entry (shape.c): pads/value attributes"},
    "Slice": {1: "own entry (shape.c): starts/ends/axes attributes"},
    "BatchNormalization": {6: "is_test=1 and spatial=1 only (as 9 at inference); others "
                           "are refused by name", 7: "spatial=1 only, as 9 does"},
    "Gemm": {1: "broadcast attribute: C broadcasts like numpy either way", 6: "same as 1",
             7: "C required until 11"},
    "Max": {6: "inputs of one shape (numpy broadcasting from 8)"},
    "Min": {6: "inputs of one shape (numpy broadcasting from 8)"},
    "Sum": {6: "inputs of one shape (numpy broadcasting from 8)"},
    "Mean": {6: "inputs of one shape (numpy broadcasting from 8)"},
    "Squeeze": {1: "axes non-negative until 11"}, "Unsqueeze": {1: "axes non-negative until 11"},
    "Concat": {4: "axis non-negative until 11"}, "Split": {2: "axis non-negative until 11"},
    "Flatten": {1: "axis non-negative until 11"},
    "Gather": {1: "indices non-negative until 11"}, "OneHot": {9: "negative indices from 11"},
    "DepthToSpace": {1: "no mode attribute: DCR, the default from 11"},
    "MaxPool": {1: "no Indices, storage_order, ceil_mode, dilations: their defaults"},
    "AveragePool": {1: "no count_include_pad (0), ceil_mode (0): their defaults"},
    "ArgMax": {1: "no select_last_index (0)"}, "ArgMin": {1: "no select_last_index (0)"},
    "Softmax": {1: "coerced to 2-D at axis (default 1) until 12, as implemented"},
    "LogSoftmax": {1: "coerced to 2-D at axis (default 1) until 12, as implemented"},
    "Hardmax": {1: "coerced to 2-D at axis (default 1) until 12, as implemented"},
}


def schema_versions():
    h = defaultdict(list)
    for s in onnx.defs.get_all_schemas_with_history():
        if s.domain == "":
            h[s.name].append(s.since_version)
    return {k: sorted(v) for k, v in h.items()}


def in_force(versions, opset):
    """The since_version of the schema in force at opset, or None."""
    vs = [v for v in versions if v <= opset]
    return vs[-1] if vs else None


def main():
    autodist = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "build", "autodist")
    out = subprocess.run([autodist, "inspect", "--ops"], capture_output=True, text=True,
                         check=True).stdout
    ranges = {}
    for line in out.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, *rs = line.split(":")[0].split()
        ranges[name] = [tuple(map(int, r.split("-"))) for r in rs]
    hist = schema_versions()
    flagged = 0
    for name in sorted(ranges):
        vs = hist.get(name)
        rs = ranges[name]
        text = " ".join("%d-%d" % r for r in rs)
        if not vs:
            print("%-26s autodist %-10s  no ONNX schema" % (name, text))
            flagged += 1
            continue
        problems = []
        for lo, hi in rs:
            if lo < vs[0]:
                problems.append("claims %d, before the first schema (%d)" % (lo, vs[0]))
            for v in sorted(set(filter(None, (in_force(vs, o) for o in range(lo, hi + 1))))):
                why = OLD_FORMS.get(name, {}).get(v)
                if why:
                    problems.append("covers %s-%d: %s" % (name, v, why))
        lo = rs[0][0]
        head = in_force(vs, lo)
        note = SUPERSET.get(name, {}).get(head, "")
        print("%-26s autodist %-10s  schemas %-18s  at %d: %s-%s%s" %
              (name, text, ",".join(map(str, vs)), lo, name, head,
               " (%s)" % note if note else ""))
        for p in problems:
            print("    FLAG " + p)
        flagged += bool(problems)
    print("%d ops, %d flagged" % (len(ranges), flagged))
    return 1 if flagged else 0


if __name__ == "__main__":
    sys.exit(main())
