"""A PyTorch twin of the exact deployed model, built from model.onnx itself.

The exporter folded batch-norm into the convolutions, so the twin is the folded
network (conv+bias, ReLU, max-pool, global mean, linear) with every weight read
from the ONNX initializers: it is the committed model, not a retrained look-alike.
`check_twin` compares it with onnxruntime on real images.
"""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "pneumonia" / "model.onnx"
SMOOTHED_MODEL = ROOT / "models" / "pneumonia-smoothed" / "model.onnx"
CONVS = ["b1.0", "b1.3", "b2.0", "b2.3", "b3.0", "b3.3"]


class FoldedTwin(nn.Module):
    def __init__(self, path: Path = MODEL):
        super().__init__()
        w = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in onnx.load(str(path)).graph.initializer}
        self.register_buffer("mean", w["mean"].float())
        self.register_buffer("std", w["std"].float())
        self.convs = nn.ModuleList()
        for name in CONVS:
            weight, bias = w[f"{name}.weight"], w[f"{name}.weight_bias"]
            conv = nn.Conv2d(weight.shape[1], weight.shape[0], 3, padding=1)
            conv.weight.data.copy_(weight)
            conv.bias.data.copy_(bias)
            self.convs.append(conv)
        self.fc = nn.Linear(128, 2)
        self.fc.weight.data.copy_(w["fc.weight"])
        self.fc.bias.data.copy_(w["fc.bias"])
        self.eval()

    def forward(self, x):
        x = (x - self.mean) / self.std
        for i, conv in enumerate(self.convs):
            x = F.relu(conv(x))
            if i in (1, 3):
                x = F.max_pool2d(x, 2)
        return self.fc(x.mean(dim=(2, 3)))


class SmoothedTwin(nn.Module):
    """The folded twin of models/pneumonia-smoothed/model.onnx, the base model
    of randomized smoothing: four 3x3 convolutions (strides read from the
    graph), ReLU, global mean, linear; every weight from the initializers."""

    def __init__(self, path: Path = SMOOTHED_MODEL):
        super().__init__()
        graph = onnx.load(str(path)).graph
        w = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in graph.initializer}
        self.register_buffer("mean", w["mean"].float())
        self.register_buffer("std", w["std"].float())
        self.convs = nn.ModuleList()
        for node in (n for n in graph.node if n.op_type == "Conv"):
            weight, bias = w[node.input[1]], w[node.input[2]]
            strides = next(a.ints for a in node.attribute if a.name == "strides")
            conv = nn.Conv2d(weight.shape[1], weight.shape[0], 3, stride=tuple(strides), padding=1)
            conv.weight.data.copy_(weight)
            conv.bias.data.copy_(bias)
            self.convs.append(conv)
        self.fc = nn.Linear(w["fc.weight"].shape[1], w["fc.weight"].shape[0])
        self.fc.weight.data.copy_(w["fc.weight"])
        self.fc.bias.data.copy_(w["fc.bias"])
        self.eval()

    def forward(self, x):
        x = (x - self.mean) / self.std
        for conv in self.convs:
            x = F.relu(conv(x))
        return self.fc(x.mean(dim=(2, 3)))


def onnx_logits(images_unit: np.ndarray, path: Path = MODEL) -> np.ndarray:
    """Logits of a deployed ONNX model (by default the demo model) for
    [N, 1, 28, 28] float32 in [0, 1]."""
    sess = ort.InferenceSession(str(path))
    return sess.run(None, {"image": images_unit.astype(np.float32)})[0]


def check_twin(twin: nn.Module, images_u8: np.ndarray, path: Path = MODEL) -> float:
    """Max |twin - onnxruntime| over the logits of `images_u8` ([N, 28, 28] uint8)."""
    x = images_u8[:, None].astype(np.float32) / 255.0
    with torch.no_grad():
        ours = twin(torch.from_numpy(x)).numpy()
    return float(np.abs(ours - onnx_logits(x, path)).max())
