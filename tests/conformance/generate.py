#!/usr/bin/python3
"""Generates ONNX's backend node tests into a folder.

    /usr/bin/python3 tests/conformance/generate.py DIR

runs `onnx.backend.test.cmd_tools generate-data -o DIR` of Debian's
python3-onnx (onnx 1.12), which writes DIR/node/test_*/ (model.onnx and
test_data_set_*/input_*.pb, output_*.pb) and a few other kinds run.py does
not use. Two incompatibilities of that onnx with Debian 12's other packages
are patched in this process only:
  - numpy 1.24 removed the aliases np.float, np.int, np.bool, np.object that
    onnx 1.12's test generators still use; they are restored;
  - Debian's protobuf refuses a Python bool for an int attribute, which some
    generators pass (keepdims=True); make_attribute turns bools into ints,
    the value ONNX defines for them.
The data is written to DIR.tmp.PID and renamed into place, so an interrupted
run never leaves a half-generated DIR; DIR/node present means complete.
"""
import os
import runpy
import shutil
import sys


def patch():
    import numpy as np

    for alias, typ in (("float", float), ("int", int), ("bool", bool), ("object", object)):
        if alias not in np.__dict__:
            setattr(np, alias, typ)
    import onnx.helper

    make_attribute = onnx.helper.make_attribute

    def make_attribute_int_bools(key, value, *args, **kwargs):
        if isinstance(value, bool):
            value = int(value)
        return make_attribute(key, value, *args, **kwargs)

    onnx.helper.make_attribute = make_attribute_int_bools


def generate(out_dir):
    """Writes the node tests into out_dir (replacing an incomplete one)."""
    out_dir = os.path.abspath(out_dir)
    if os.path.isdir(os.path.join(out_dir, "node")):
        return
    tmp = "%s.tmp.%d" % (out_dir, os.getpid())
    shutil.rmtree(tmp, ignore_errors=True)
    patch()
    argv = sys.argv
    sys.argv = ["cmd_tools", "generate-data", "-o", tmp]
    try:
        runpy.run_module("onnx.backend.test.cmd_tools", run_name="__main__")
    finally:
        sys.argv = argv
    if not os.path.isdir(os.path.join(tmp, "node")):
        sys.exit("generate.py: error: onnx wrote no node tests into %s" % tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.rename(tmp, out_dir)


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1].startswith("-"):
        sys.exit("usage: generate.py DIR")
    generate(sys.argv[1])
    print("node tests in %s" % os.path.join(os.path.abspath(sys.argv[1]), "node"))
