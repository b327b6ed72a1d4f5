#!/usr/bin/env python3
"""tests/ref/models.py: the PyTorch models the reference tests, the examples and
the benchmark train, and their ONNX export.

Each model is built with a fixed seed, so its ONNX export (the initial weights
autodist starts from) is reproducible, and the reference trainer can rebuild
the same nn.Module and load the weights back from the ONNX initializers by
name (export keeps state_dict names such as fc1.weight).

Exports are restricted to the op set autodist supports (OPS below); export()
prints the op types it produced and fails on anything else, so a PyTorch
upgrade that changes the exported graph is caught here, not inside autodist.

The real models (torchvision resnet18/resnet50/mobilenet_v2 at 3x64x64, and a
transformer encoder) have batch norm or dropout: export(..., training=True)
exports them with torch.onnx.TrainingMode.TRAINING, which keeps
BatchNormalization in training mode and Dropout (p = 0) in the graph, the form
autodist trains; the default is the eval-mode export an inference user makes.

    /usr/bin/python3 tests/ref/models.py OUT_DIR [NAME...]   # export models
"""
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

# The ONNX ops autodist compiles (docs/ops.md); an export may use no others.
OPS = frozenset("""Gemm MatMul Add Sub Mul Div Relu Sigmoid Tanh Softmax LogSoftmax Conv MaxPool
AveragePool GlobalAveragePool Flatten Reshape Transpose Pad Constant Identity Dropout Gather
ReduceMean ReduceSum BatchNormalization Clip Shape Unsqueeze Concat Slice Cast Pow Sqrt
LayerNormalization""".split())

OPSET = 13
SEED = 0


class MLP(nn.Module):
  """Linear layers with an activation between them (no activation after the
  last): MLP([784, 512, 512, 10]) is the benchmark MLP."""

  def __init__(self, sizes, act="relu"):
    super().__init__()
    self.sizes = list(sizes)
    self.act = act
    for i in range(len(sizes) - 1):
      setattr(self, "fc%d" % (i + 1), nn.Linear(sizes[i], sizes[i + 1]))

  def forward(self, x):
    n = len(self.sizes) - 1
    for i in range(n):
      x = getattr(self, "fc%d" % (i + 1))(x)
      if i < n - 1:
        x = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}[self.act](x)
    return x


class CNN(nn.Module):
  """PyTorch's MNIST example shape: conv 3x3, relu, maxpool 2, conv 3x3, relu,
  maxpool 2, flatten, fc, relu, fc. CNN(28, 32, 64, 128) is the benchmark CNN
  (28 -> 26 -> 13 -> 11 -> 5: 64*5*5 = 1600 features)."""

  def __init__(self, side, c1, c2, hidden, classes=10):
    super().__init__()
    self.side = side
    s = ((side - 2) // 2 - 2) // 2
    self.conv1 = nn.Conv2d(1, c1, 3, 1)
    self.conv2 = nn.Conv2d(c1, c2, 3, 1)
    self.fc1 = nn.Linear(c2 * s * s, hidden)
    self.fc2 = nn.Linear(hidden, classes)

  def forward(self, x):
    x = F.max_pool2d(F.relu(self.conv1(x)), 2)
    x = F.max_pool2d(F.relu(self.conv2(x)), 2)
    x = torch.flatten(x, 1)
    x = F.relu(self.fc1(x))
    return self.fc2(x)


class EmbedBag(nn.Module):
  """Text classification: token ids [batch, seq] -> embedding rows -> mean over
  the sequence -> Linear -> ReLU -> Linear. torch.mean(dim=1) exports as
  Gather + ReduceMean (axes [1], keepdims 0)."""

  def __init__(self, vocab, dim, hidden, classes):
    super().__init__()
    self.emb = nn.Embedding(vocab, dim)
    self.fc1 = nn.Linear(dim, hidden)
    self.fc2 = nn.Linear(hidden, classes)

  def forward(self, x):
    # The reference trainer (torch_train.py) casts every input to the float
    # dtype it trains in; token ids go back to int64 here. Not traced on export,
    # where the ids already are int64.
    if x.dtype != torch.long:
      x = x.long()
    h = torch.mean(self.emb(x), dim=1)
    return self.fc2(F.relu(self.fc1(h)))


class Encoder(nn.Module):
  """Token ids [batch, seq] -> nn.Embedding -> nn.TransformerEncoder (post-norm
  layers, batch_first, dropout 0) -> mean over the sequence -> Linear."""

  def __init__(self, vocab=100, d=32, heads=4, ff=64, layers=2, classes=10):
    super().__init__()
    self.emb = nn.Embedding(vocab, d)
    layer = nn.TransformerEncoderLayer(d, heads, ff, dropout=0.0, batch_first=True)
    self.enc = nn.TransformerEncoder(layer, layers)
    self.head = nn.Linear(d, classes)

  def forward(self, x):
    if x.dtype != torch.long:
      x = x.long()
    return self.head(self.enc(self.emb(x)).mean(1))


def torchvision_model(name):
  """A torchvision model with random weights and 10 classes. Every residual
  block starts as the identity (the last batch norm of its branch has weight
  0: torchvision's zero_init_residual for the resnets, the same done by hand
  for mobilenet_v2's inverted residuals), the usual recipe for training from
  scratch. Without it the float32 backward pass of these deep batch-norm nets
  loses about 2% of the gradient to cancellation at initialization (PyTorch
  float32 against float64), and runs of any float32 code part within steps.
  mobilenet_v2's classifier dropout is 0 (with p > 0 autodist draws its own
  masks, which PyTorch's cannot match)."""
  import torchvision
  if name.startswith("resnet"):
    return getattr(torchvision.models, name)(num_classes=10, zero_init_residual=True)
  m = getattr(torchvision.models, name)(num_classes=10, dropout=0.0)
  for block in m.modules():
    if isinstance(block, torchvision.models.mobilenetv2.InvertedResidual) and block.use_res_connect:
      last_bn = [b for b in block.modules() if isinstance(b, nn.BatchNorm2d)][-1]
      nn.init.zeros_(last_bn.weight)
  return m


# name -> (constructor, shape of one sample, kind of output)
# "classes": logits for cross_entropy over 10 classes; "regress": 3 floats for mse.
MODELS = {
    "mlp": (lambda: MLP([784, 512, 512, 10]), (784,), "classes"),
    "cnn": (lambda: CNN(28, 32, 64, 128), (1, 28, 28), "classes"),
    "mlp_small": (lambda: MLP([64, 32, 10]), (64,), "classes"),
    # 12 -> 10 -> 5 -> 3 -> 1: both pools drop a row and a column (floor).
    "cnn_small": (lambda: CNN(12, 4, 8, 16), (1, 12, 12), "classes"),
    "mlp_mse": (lambda: MLP([16, 32, 3], act="tanh"), (16,), "regress"),
    # examples/digits: sklearn digits are 8x8 = 64 features, 10 classes.
    "digits_mlp": (lambda: MLP([64, 128, 64, 10]), (64,), "classes"),
    # Embedding models (issue 3): int64 token ids in, 4 class logits out.
    "embed_small": (lambda: EmbedBag(500, 16, 16, 4), (8,), "classes"),
    # examples/embedding: a 50,000-word vocabulary, 16 tokens per document.
    "embed": (lambda: EmbedBag(50000, 32, 64, 4), (16,), "classes"),
    # Issue 5: real models. torchvision's (random weights) on 3x64x64 images.
    "resnet18": (lambda: torchvision_model("resnet18"), (3, 64, 64), "classes"),
    "resnet50": (lambda: torchvision_model("resnet50"), (3, 64, 64), "classes"),
    "mobilenet_v2": (lambda: torchvision_model("mobilenet_v2"), (3, 64, 64), "classes"),
    # Embedding + 2 transformer encoder layers (4 heads) + head, 12 tokens.
    "encoder": (lambda: Encoder(), (12,), "classes"),
}

# Opset of each model's export where it is not OPSET. encoder17 is the encoder
# at opset 17, where layer norm exports as one LayerNormalization.
MODELS["encoder17"] = MODELS["encoder"]
OPSETS = {"encoder17": 17}
# Models with batch norm or dropout: a training run needs their training-mode
# export (export(..., training=True)).
REAL = frozenset(["resnet18", "resnet50", "mobilenet_v2", "encoder", "encoder17"])

# Models whose input is int64 token ids: name -> vocabulary size. Their
# outputs are 4 class logits (CLASSES), not 10.
VOCAB = {"embed_small": 500, "embed": 50000, "encoder": 100, "encoder17": 100}
CLASSES = {"embed_small": 4, "embed": 4}


def build(name, seed=SEED):
  """The model `name` with its seeded initial weights, in float32, eval mode
  (call .train() to train the models that have batch norm)."""
  ctor = MODELS[name][0]
  torch.manual_seed(seed)
  m = ctor().float()
  m.eval()
  return m


def sample_shape(name):
  return MODELS[name][1]


def outputs(name):
  """Width of the model's output: 10 logits (4 for the embedding models), or 3
  regression targets."""
  return CLASSES.get(name, 10) if MODELS[name][2] == "classes" else 3


def onnx_op_types(path_or_model):
  import onnx
  m = onnx.load(path_or_model) if isinstance(path_or_model, str) else path_or_model
  return [n.op_type for n in m.graph.node]


def export_module(module, sample_shape_, path, opset=OPSET, dtype=torch.float32, training=False):
  """Exports `module` to `path`: input "input" (of `dtype`: int64 for token
  ids) and output "logits" with a dynamic first axis "batch", parameters as
  initializers, constants folded (training=False) or, with training=True, in
  torch.onnx.TrainingMode.TRAINING without folding (BatchNormalization and
  Dropout stay). Returns the list of op types; raises if one is outside OPS."""
  x = torch.zeros((2,) + tuple(sample_shape_), dtype=dtype)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  mode = {"training": torch.onnx.TrainingMode.TRAINING} if training else {}
  if training:
    # Tracing in training mode runs batch norm's forward, which moves its
    # running statistics: export a copy, so `module` keeps its initial state.
    import copy
    module = copy.deepcopy(module)
  torch.onnx.export(module, (x,), path, export_params=True, opset_version=opset,
                    do_constant_folding=not training, input_names=["input"],
                    output_names=["logits"],
                    dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, **mode)
  ops = onnx_op_types(path)
  bad = sorted(set(ops) - OPS)
  if bad:
    raise RuntimeError("%s: export uses ops outside autodist's set: %s" % (path, ", ".join(bad)))
  return ops


def export(name, path, seed=SEED, opset=None, training=False):
  """Builds model `name` (seeded) and exports it; returns (module, op types)."""
  m = build(name, seed)
  dtype = torch.int64 if name in VOCAB else torch.float32
  opset = opset or OPSETS.get(name, OPSET)
  return m, export_module(m, sample_shape(name), path, opset, dtype, training)


def main(argv):
  if len(argv) < 2:
    print(__doc__.strip().splitlines()[-1].strip())
    return 2
  out = argv[1]
  names = argv[2:] or list(MODELS)
  for n in names:
    path = os.path.join(out, n + ".onnx")
    _, ops = export(n, path)
    print("%s: %s" % (path, " ".join(ops)))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
