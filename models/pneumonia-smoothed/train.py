"""Train medguard's certifiable model: a small CNN on PneumoniaMNIST trained under
Gaussian noise, the base model of randomized smoothing (issue 15).

Randomized smoothing classifies many noised copies of each image, so the base
model must be right under that noise (Cohen et al. 2019 train with Gaussian
augmentation at the sigma they certify with) and cheap (hundreds of inferences
per image in the sandbox). The split is the demo model's: same seed, same
calibration hold-out, so the two are compared on the same images.

Usage (from the repository root, with a venv outside the repo):

    python -m venv ../venv-torch && ../venv-torch/bin/pip install -r models/pneumonia/requirements.txt
    ../venv-torch/bin/python models/pneumonia-smoothed/train.py --data ../shared/data/pneumoniamnist/pneumoniamnist.npz

Writes, beside this script: model.onnx, metrics.json (with the smoothed
classifier's certified accuracy, estimated here with the same n, sigma and
alpha as the manifest), manifest.json and splits.json.
"""

import argparse
import hashlib
import json
import platform
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy.stats import beta, norm

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "pneumonia"))
import train as demo  # noqa: E402  the demo model's split, augmentation and export conventions

SEED = demo.SEED
LABELS = demo.LABELS


class SmoothableCnn(nn.Module):
    """Input [batch, 1, 28, 28] in [0, 1] plus noise; output [batch, 2] logits.

    Four 3x3 convolutions, two of them strided: about 3.7 M multiply-adds per
    image, an eighth of the demo model's, because smoothing runs it hundreds of
    times per image.
    """

    def __init__(self, mean: float, std: float, width: int):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("std", torch.tensor(std))
        w = width

        def conv(cin, cout, stride):
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            )

        self.features = nn.Sequential(conv(1, w, 1), conv(w, 2 * w, 2), conv(2 * w, 4 * w, 2), conv(4 * w, 4 * w, 1))
        self.fc = nn.Linear(4 * w, 2)

    def forward(self, x):
        x = (x - self.mean) / self.std
        x = self.features(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def smoothed_votes(model, images: np.ndarray, sigma: float, n: int, gen: torch.Generator) -> np.ndarray:
    """Votes per class of `n` noised copies of each image (uint8 pixels)."""
    model.eval()
    votes = np.zeros((len(images), 2), dtype=np.int64)
    with torch.no_grad():
        for i, image in enumerate(images):
            x = torch.from_numpy(image).float().view(1, 1, 28, 28) / 255.0
            left = n
            while left:
                run = min(left, 200)
                noisy = x.expand(run, 1, 28, 28) + sigma * torch.randn(run, 1, 28, 28, generator=gen)
                votes[i] += np.bincount(model(noisy).argmax(1).numpy(), minlength=2)
                left -= run
    return votes


def radius(votes: np.ndarray, n: int, sigma: float, alpha: float) -> np.ndarray:
    """Certified L2 radius per image (NaN = abstain): the Clopper-Pearson lower
    bound at alpha / classes, as medguard-certify computes it."""
    top = votes.max(1)
    lower = np.where(top > 0, beta.ppf(alpha / 2, top, n - top + 1), 0.0)
    return np.where(lower > 0.5, sigma * norm.ppf(np.clip(lower, 0, 1)), np.nan)


def certified_report(votes, labels, n, sigma, alpha, radii=(0.0, 0.125, 0.25, 0.5)):
    r = radius(votes, n, sigma, alpha)
    pred = votes.argmax(1)
    out = {"abstain": float(np.isnan(r).mean())}
    for rad in radii:
        ok = (pred == labels) & ~np.isnan(r) & (r >= rad)
        per_class = [float(ok[labels == c].mean()) for c in (0, 1)]
        out[f"{rad}"] = {
            "accuracy": float(ok.mean()),
            "balanced_accuracy": float(np.mean(per_class)),
            "specificity": per_class[0],
            "sensitivity": per_class[1],
        }
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--sigma", type=float, default=0.375)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--samples", type=int, default=400)
    ap.add_argument("--alpha", type=float, default=0.001)
    ap.add_argument("--required-radius", type=float, default=0.25)
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args()
    demo.seed_everything()

    d = np.load(args.data)
    train_x, train_y = d["train_images"], d["train_labels"].ravel()
    val_x, val_y = d["val_images"], d["val_labels"].ravel()
    test_x, test_y = d["test_images"], d["test_labels"].ravel()

    order = np.random.default_rng(SEED).permutation(len(train_x))
    n_cal = int(round(demo.CALIBRATION_SHARE * len(train_x)))
    cal_idx, fit_idx = np.sort(order[:n_cal]), np.sort(order[n_cal:])
    fit_x, fit_y = train_x[fit_idx], train_y[fit_idx]

    mean = float(fit_x.mean() / 255.0)
    std = float(fit_x.std() / 255.0)
    model = SmoothableCnn(mean, std, args.width)

    counts = np.bincount(fit_y, minlength=2)
    weights = torch.tensor(len(fit_y) / (2 * counts), dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = args.epochs * int(np.ceil(len(fit_x) / 64))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    gen = torch.Generator().manual_seed(SEED)
    x_all = torch.from_numpy(fit_x).float().unsqueeze(1) / 255.0
    y_all = torch.from_numpy(fit_y).long()

    def noisy_val_accuracy():
        # Balanced accuracy of the base model under one noise draw: the
        # model selection signal (the smoothed classifier is its majority).
        model.eval()
        g = torch.Generator().manual_seed(SEED + 1)
        with torch.no_grad():
            x = torch.from_numpy(val_x).float().unsqueeze(1) / 255.0
            pred = model(x + args.sigma * torch.randn(x.shape, generator=g)).argmax(1).numpy()
        return float(np.mean([np.mean(pred[val_y == c] == c) for c in (0, 1)]))

    best = (-1.0, None, -1)
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(x_all), generator=gen)
        for i in range(0, len(perm), 64):
            idx = perm[i : i + 64]
            x = demo.augment(x_all[idx], gen)
            x = x + args.sigma * torch.randn(x.shape, generator=gen)
            loss = F.cross_entropy(model(x), y_all[idx], weight=weights)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        val = noisy_val_accuracy()
        print(f"epoch {epoch + 1:2d}  loss {loss.item():.4f}  noisy val balanced acc {val:.4f}", flush=True)
        if val > best[0]:
            best = (val, {k: v.clone() for k, v in model.state_dict().items()}, epoch + 1)

    model.load_state_dict(best[1])
    model.eval()
    cert_gen = torch.Generator().manual_seed(SEED + 2)
    votes = smoothed_votes(model, test_x, args.sigma, args.samples, cert_gen)
    metrics = {
        "selected_epoch": best[2],
        "sigma": args.sigma,
        "width": args.width,
        "noisy_val_balanced_accuracy": best[0],
        "test_certified": certified_report(votes, test_y, args.samples, args.sigma, args.alpha),
        "samples": args.samples,
        "alpha": args.alpha,
        "fit_images": int(len(fit_idx)),
        "calibration_images": int(len(cal_idx)),
        "normalisation": {"mean": mean, "std": std},
    }
    print(json.dumps(metrics, indent=2))
    args.out.mkdir(parents=True, exist_ok=True)
    export(model, args.out / "model.onnx")
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (args.out / "splits.json").write_text(
        json.dumps({"seed": SEED, "source": "train", "calibration_indices": cal_idx.tolist()}) + "\n"
    )
    certification = {
        "sigma": args.sigma,
        "samples": args.samples,
        "alpha": args.alpha,
        "required_radius_l2": args.required_radius,
    }
    demo.write_manifest.main(
        directory=args.out,
        name="pneumonia-smoothed-cnn",
        extra={"certification": certification, "training": provenance(args, metrics)},
    )


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def provenance(args, metrics) -> dict:
    """The manifest's `training` section: what this model was made from."""
    import onnxscript
    import scipy
    import sklearn

    flat = {}

    def walk(prefix, value):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[prefix] = float(value)

    walk("", metrics)
    return {
        "inputs": [
            {"role": "data", "file": args.data.name, "sha256": sha256(args.data)},
            {"role": "splits", "file": "splits.json", "sha256": sha256(args.out / "splits.json")},
            {"role": "script", "file": "train.py", "sha256": sha256(Path(__file__))},
            {"role": "script-module", "file": "pneumonia-train.py", "sha256": sha256(Path(demo.__file__))},
            {
                "role": "script-module",
                "file": "write_manifest.py",
                "sha256": sha256(Path(demo.write_manifest.__file__)),
            },
        ],
        "seeds": {"split-and-training": SEED, "model-selection-noise": SEED + 1, "certified-estimate-noise": SEED + 2},
        "libraries": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
            "onnxscript": onnxscript.__version__,
            "scipy": scipy.__version__,
            "scikit-learn": sklearn.__version__,
        },
        "metrics": flat,
    }


def export(model, path: Path):
    dummy = torch.zeros(2, 1, 28, 28)
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.onnx.export(
        model, (dummy,), input_names=["image"], output_names=["logits"],
        dynamic_shapes={"x": {0: batch}}, dynamo=True, external_data=False,
    )
    program.save(str(path))
    # The exporter records each node's Python stack trace, with this
    # machine's paths and the script's line numbers: dropped, so that the
    # bytes depend on the weights and the graph alone.
    graph = onnx.load(str(path))
    for node in graph.graph.node:
        del node.metadata_props[:]
    onnx.save(graph, str(path))
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    # onnxruntime must agree with PyTorch on noised inputs too.
    x = np.random.default_rng(SEED).normal(0.5, 0.3, (4, 1, 28, 28)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    got = ort.InferenceSession(str(path)).run(None, {"image": x})[0]
    assert np.allclose(want, got, atol=1e-4), (want, got)


if __name__ == "__main__":
    main()
