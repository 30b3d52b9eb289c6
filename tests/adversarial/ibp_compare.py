"""Should medguard build interval bound propagation (issue 15, item 4)? The
measurement behind the answer.

Interval bound propagation (IBP; Gowal et al. 2018) certifies an L-infinity
ball deterministically: push the box [x - eps, x + eps] through the network
layer by layer; if the lower bound of the predicted class's logit exceeds the
upper bound of every other, no image in the box can change the label. It is
cheap (about two forward passes) but only tight for networks trained for it.

This script measures, on the 500-image test split:

1. IBP on the two deployed models (the demo model and the smoothed model's
   base network), through their folded twins: what IBP certifies for models
   that were not trained for it;
2. IBP on a network trained for it here (the smoothed model's architecture
   without batch-norm, Gowal et al.'s schedule: eps ramped up to 1.1x the
   target, the loss mixed from clean to worst-case cross-entropy), at the
   target L-infinity 2/255;
3. verified balanced accuracy at L-infinity 1/255, 2/255 and 4/255, beside
   randomized smoothing's certified balanced accuracy at the L2 radius that
   contains each L-infinity ball (eps * 28: 2/255 is inside L2 0.22), read
   from `medguard eval`'s report (docs/eval-certified.json).

    ../venv-torch/bin/python tests/adversarial/ibp_compare.py --data ../shared/data/pneumoniamnist/pneumoniamnist.npz

Writes ibp.json beside this script. About 10 minutes on 2 cores.
"""

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchattacks

from twin import FoldedTwin, SmoothedTwin

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SEED = 20261204
EPS = (1, 2, 4)
TARGET = 2
TRAIN = {"epochs": 30, "batch": 64, "lr": 1e-3, "warmup_epochs": 3, "ramp_epochs": 15, "train_eps_factor": 1.1, "kappa_end": 0.5}


def interval(module, lower, upper):
    """The box [lower, upper] through one layer, exactly for monotone layers
    and by centre and radius for affine ones."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        centre, radius = (upper + lower) / 2, (upper - lower) / 2
        if isinstance(module, nn.Conv2d):
            c = module(centre)
            r = F.conv2d(radius, module.weight.abs(), None, module.stride, module.padding)
        else:
            c, r = module(centre), F.linear(radius, module.weight.abs())
        return c - r, c + r
    raise TypeError(type(module))


def ibp_logits(model, x, eps):
    """Lower and upper logits over the L-infinity ball of `eps` around `x`,
    clipped to the pixel range. Works for the twins and for IbpCnn: each is
    normalisation, 3x3 convolutions with ReLU (and, in the demo, 2x2 max
    pooling after the second and fourth), a global mean and a linear layer."""
    lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    lo, hi = (lo - model.mean) / model.std, (hi - model.mean) / model.std
    pools = getattr(model, "pool_after", ())
    for i, conv in enumerate(model.convs):
        lo, hi = interval(conv, lo, hi)
        lo, hi = F.relu(lo), F.relu(hi)
        if i in pools:
            lo, hi = F.max_pool2d(lo, 2), F.max_pool2d(hi, 2)
    lo, hi = lo.mean(dim=(2, 3)), hi.mean(dim=(2, 3))
    return interval(model.fc, lo, hi)


def verified(model, x, y, eps):
    """Images whose true class provably wins over the whole ball."""
    with torch.no_grad():
        lo, hi = ibp_logits(model, x, eps)
    other = 1 - y
    idx = torch.arange(len(y))
    return (lo[idx, y] > hi[idx, other]).numpy()


def balanced(ok, y):
    y = y.numpy()
    return float(np.mean([ok[y == c].mean() for c in (0, 1)]))


class IbpCnn(nn.Module):
    """The smoothed model's architecture (four 3x3 convolutions, two strided,
    global mean, linear), without batch-norm, which IBP cannot bound tightly."""

    def __init__(self, mean, std, width=16):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("std", torch.tensor(std))
        w = width
        self.convs = nn.ModuleList(
            [nn.Conv2d(1, w, 3, 1, 1), nn.Conv2d(w, 2 * w, 3, 2, 1), nn.Conv2d(2 * w, 4 * w, 3, 2, 1), nn.Conv2d(4 * w, 4 * w, 3, 1, 1)]
        )
        self.fc = nn.Linear(4 * w, 2)

    def forward(self, x):
        x = (x - self.mean) / self.std
        for conv in self.convs:
            x = F.relu(conv(x))
        return self.fc(x.mean(dim=(2, 3)))


def worst_case_logits(model, x, y, eps):
    lo, hi = ibp_logits(model, x, eps)
    onehot = F.one_hot(y, 2).bool()
    return torch.where(onehot, lo, hi)


def train_ibp(x, y, weights):
    """Gowal et al.'s recipe, scaled down: clean warm-up, eps and the loss mix
    ramped linearly, then held."""
    gen = torch.Generator().manual_seed(SEED)
    model = IbpCnn(float(x.mean()), float(x.std()))
    opt = torch.optim.Adam(model.parameters(), lr=TRAIN["lr"])
    steps_per_epoch = math.ceil(len(x) / TRAIN["batch"])
    target = TRAIN["train_eps_factor"] * TARGET / 255
    for epoch in range(TRAIN["epochs"]):
        model.train()
        order = torch.randperm(len(x), generator=gen)
        for s in range(steps_per_epoch):
            t = (epoch - TRAIN["warmup_epochs"] + s / steps_per_epoch) / TRAIN["ramp_epochs"]
            ramp = min(max(t, 0.0), 1.0)
            eps, kappa = ramp * target, 1.0 - ramp * (1.0 - TRAIN["kappa_end"])
            b = order[s * TRAIN["batch"] : (s + 1) * TRAIN["batch"]]
            xb, yb = x[b], y[b]
            loss = kappa * F.cross_entropy(model(xb), yb, weight=weights)
            if eps > 0:
                loss = loss + (1 - kappa) * F.cross_entropy(worst_case_logits(model, xb, yb, eps), yb, weight=weights)
            opt.zero_grad()
            loss.backward()
            opt.step()
        print(f"  epoch {epoch + 1}/{TRAIN['epochs']}: eps {eps * 255:.2f}/255, loss {loss.item():.3f}", flush=True)
    model.eval()
    return model


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--eval", type=Path, default=ROOT / "docs" / "eval-certified.json", help="medguard eval's report on the smoothed model")
    ap.add_argument("--epochs", type=int, default=TRAIN["epochs"], help="fewer for a quick trial")
    ap.add_argument("--out", type=Path, default=HERE / "ibp.json")
    args = ap.parse_args()
    TRAIN["epochs"] = args.epochs
    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    d = np.load(args.data)
    to_x = lambda a: torch.from_numpy(a[:, None].astype(np.float32) / 255.0)  # noqa: E731
    test_x, test_y = to_x(d["test_images"]), torch.from_numpy(d["test_labels"].ravel().astype(np.int64))
    # The training images the deployed models were fitted on: the split's
    # training set less the calibration hold-out (models/pneumonia/train.py).
    splits = json.loads((ROOT / "models" / "pneumonia-smoothed" / "splits.json").read_text())
    held_out = set(splits["calibration_indices"])
    fit = np.array([i for i in range(len(d["train_images"])) if i not in held_out])
    train_x, train_y = to_x(d["train_images"][fit]), torch.from_numpy(d["train_labels"].ravel()[fit].astype(np.int64))
    counts = np.bincount(train_y.numpy(), minlength=2)
    weights = torch.tensor(len(train_y) / (2 * counts), dtype=torch.float32)

    demo, smoothed_base = FoldedTwin(), SmoothedTwin()
    demo.pool_after = (1, 3)
    print("training a network for IBP", flush=True)
    ibp = train_ibp(train_x, train_y, weights)

    report = {"images": len(test_y), "training": TRAIN, "target_linf": f"{TARGET}/255", "models": {}}
    for name, model in (("demo model (not trained for IBP)", demo), ("smoothed model's base network (not trained for IBP)", smoothed_base), ("trained for IBP here", ibp)):
        with torch.no_grad():
            clean = (model(test_x).argmax(1) == test_y).numpy()
        # At eps 0 the bounds meet: IBP must verify exactly the correct images.
        assert (verified(model, test_x, test_y, 0.0) == clean).all(), name
        row = {"clean_balanced_accuracy": balanced(clean, test_y)}
        for e in EPS:
            ok = verified(model, test_x, test_y, e / 255)
            row[f"verified_balanced_accuracy_linf_{e}/255"] = balanced(ok, test_y)
            # A check on the bounds: PGD inside the same ball must not move
            # a verified image off its class.
            pgd = torchattacks.PGD(model, eps=e / 255, alpha=e / 255 / 4, steps=20, random_start=True)
            adv = pgd(test_x, test_y)
            with torch.no_grad():
                fooled = (model(adv).argmax(1) != test_y).numpy()
            row[f"pgd_flips_among_verified_linf_{e}/255"] = int((ok & fooled).sum())
            assert not (ok & fooled).any(), f"{name}: PGD flipped a verified image at {e}/255"
        report["models"][name] = row
        print(name, row, flush=True)
    if args.eval.exists():
        curve = json.loads(args.eval.read_text())["certified"]["curve"]
        smoothing = {}
        for e in EPS:
            # The L-infinity ball of eps lies inside the L2 ball of eps * 28
            # (784 pixels); the curve is sampled every 0.01, so round up.
            r = math.ceil(e / 255 * 28 * 100) / 100
            at = [c for c in curve if c["radius_l2"] >= r - 1e-9]
            smoothing[f"linf_{e}/255 (L2 {r})"] = at[0]["balanced_accuracy"] if at else 0.0
        report["randomized_smoothing_certified_balanced_accuracy"] = smoothing
        print("smoothing", smoothing)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
