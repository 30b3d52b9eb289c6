"""Train the medguard demo model: a small CNN on PneumoniaMNIST (28x28 chest X-rays).

Reproducible: fixed seeds, deterministic kernels, pinned requirements.txt.
Usage (from the repository root, with a venv outside the repo):

    python -m venv ../venv-torch && ../venv-torch/bin/pip install -r models/pneumonia/requirements.txt
    ../venv-torch/bin/python models/pneumonia/train.py --data ../shared/data/pneumoniamnist/pneumoniamnist.npz

Writes, beside this script: model.onnx (logits, dynamic batch axis), manifest.json, metrics.json,
golden.json (sample inputs with PyTorch's probabilities), samples/*.png and
splits.json (which training images were held out for screening calibration).
"""

import argparse
import json
import random
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from sklearn.metrics import accuracy_score, roc_auc_score

import write_manifest

HERE = Path(__file__).resolve().parent
SEED = 20261128
# Share of the training split held out from training, for calibrating the
# adversarial screening on clean data the model has not fitted.
CALIBRATION_SHARE = 0.15
LABELS = ["normal", "pneumonia"]


class PneumoniaCnn(nn.Module):
    """Input: [batch, 1, 28, 28] in [0, 1]. Output: [batch, 2] logits.

    Normalisation lives inside the graph so that the manifest's pixel mapping is
    simply pixel / (2^bits - 1) and screening sees the image as stored.
    """

    def __init__(self, mean: float, std: float):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("std", torch.tensor(std))

        def block(cin, cout):
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            )

        self.b1, self.b2, self.b3 = block(1, 32), block(32, 64), block(64, 128)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(128, 2)

    def forward(self, x):
        x = (x - self.mean) / self.std
        x = F.max_pool2d(self.b1(x), 2)  # 14x14
        x = F.max_pool2d(self.b2(x), 2)  # 7x7
        x = self.b3(x)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(self.drop(x))


def seed_everything():
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(2)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Small random shifts, rotations and scale: X-rays are roughly centred but not aligned."""
    n = x.shape[0]
    angle = (torch.rand(n, generator=gen) - 0.5) * (2 * np.pi * 10 / 360)
    scale = 1 + (torch.rand(n, generator=gen) - 0.5) * 0.1
    shift = (torch.rand(n, 2, generator=gen) - 0.5) * 0.15
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, x.shape, align_corners=False)
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


def predict(model, images: np.ndarray) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        x = torch.from_numpy(images).float().unsqueeze(1) / 255.0
        return torch.softmax(model(x), 1)[:, 1].numpy()


def evaluate(model, images, labels):
    p = predict(model, images)
    return {"roc_auc": float(roc_auc_score(labels, p)), "accuracy": float(accuracy_score(labels, p >= 0.5))}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--epochs", type=int, default=15)
    args = ap.parse_args()
    seed_everything()

    d = np.load(args.data)
    train_x, train_y = d["train_images"], d["train_labels"].ravel()
    val_x, val_y = d["val_images"], d["val_labels"].ravel()
    test_x, test_y = d["test_images"], d["test_labels"].ravel()

    order = np.random.default_rng(SEED).permutation(len(train_x))
    n_cal = int(round(CALIBRATION_SHARE * len(train_x)))
    cal_idx, fit_idx = np.sort(order[:n_cal]), np.sort(order[n_cal:])
    fit_x, fit_y = train_x[fit_idx], train_y[fit_idx]

    mean = float(fit_x.mean() / 255.0)
    std = float(fit_x.std() / 255.0)
    model = PneumoniaCnn(mean, std)

    # Class weights from the fitting split only (about 1:3 normal:pneumonia).
    counts = np.bincount(fit_y, minlength=2)
    weights = torch.tensor(len(fit_y) / (2 * counts), dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=2e-3, total_steps=args.epochs * int(np.ceil(len(fit_x) / 64))
    )
    gen = torch.Generator().manual_seed(SEED)
    x_all = torch.from_numpy(fit_x).float().unsqueeze(1) / 255.0
    y_all = torch.from_numpy(fit_y).long()

    best = (-1.0, None, -1)
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(x_all), generator=gen)
        for i in range(0, len(perm), 64):
            idx = perm[i : i + 64]
            loss = F.cross_entropy(model(augment(x_all[idx], gen)), y_all[idx], weight=weights)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        val = evaluate(model, val_x, val_y)
        print(f"epoch {epoch + 1:2d}  loss {loss.item():.4f}  val auc {val['roc_auc']:.4f} acc {val['accuracy']:.4f}")
        if val["roc_auc"] > best[0]:
            best = (val["roc_auc"], {k: v.clone() for k, v in model.state_dict().items()}, epoch + 1)

    model.load_state_dict(best[1])
    model.eval()
    metrics = {
        "selected_epoch": best[2],
        "val": evaluate(model, val_x, val_y),
        "test": evaluate(model, test_x, test_y),
        "fit_images": int(len(fit_idx)),
        "calibration_images": int(len(cal_idx)),
        "normalisation": {"mean": mean, "std": std},
    }
    print(json.dumps(metrics, indent=2))
    export(model, test_x, test_y)
    (HERE / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_manifest.main()
    (HERE / "splits.json").write_text(
        json.dumps({"seed": SEED, "source": "train", "calibration_indices": cal_idx.tolist()}) + "\n"
    )


def export(model, test_x, test_y):
    path = HERE / "model.onnx"
    dummy = torch.zeros(2, 1, 28, 28)
    batch = torch.export.Dim("batch", min=1, max=1024)
    onnx_program = torch.onnx.export(
        model,
        (dummy,),
        input_names=["image"],
        output_names=["logits"],
        dynamic_shapes={"x": {0: batch}},
        dynamo=True,
        external_data=False,
    )
    onnx_program.save(str(path))
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)

    # Samples: the first three test images of each class, as 8-bit PNGs.
    samples_dir = HERE / "samples"
    samples_dir.mkdir(exist_ok=True)
    golden = []
    for cls, name in enumerate(LABELS):
        for k, i in enumerate(np.flatnonzero(test_y == cls)[:3]):
            file = f"samples/{name}-{k + 1}.png"
            Image.fromarray(test_x[i]).save(HERE / file)
            golden.append({"file": file, "test_index": int(i), "label": name})
    images = np.stack([test_x[g["test_index"]] for g in golden])
    with torch.no_grad():
        x = torch.from_numpy(images).float().unsqueeze(1) / 255.0
        probs = torch.softmax(model(x).double(), 1).numpy()
    sess = ort.InferenceSession(str(path))
    ort_logits = sess.run(None, {"image": x.numpy()})[0]
    ort_probs = torch.softmax(torch.from_numpy(ort_logits).double(), 1).numpy()
    assert np.abs(ort_probs - probs).max() < 1e-5, "ONNX export disagrees with PyTorch"
    for g, p in zip(golden, probs):
        g["probabilities"] = {lab: float(v) for lab, v in zip(LABELS, p)}
    (HERE / "golden.json").write_text(json.dumps({"source": "PyTorch (train.py)", "samples": golden}, indent=2) + "\n")


if __name__ == "__main__":
    main()
