#!/usr/bin/env bash
# examples/digits/run.sh: train the digits MLP with autodist on two CPU workers
# for 10 epochs and report its test accuracy (fails below 0.95); the steps are
# in ../run_example.sh. Uses build/autodist unless AUTODIST is set; writes into
# build/digits (or $OUT).
exec bash "$(dirname "${BASH_SOURCE[0]}")/../run_example.sh" digits 10 0.95
