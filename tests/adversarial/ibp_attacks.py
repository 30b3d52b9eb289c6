"""Attacks on the interval-certified guard (models/pneumonia-ibp, issue 15).

Interval bound propagation is deterministic: there is no noise to average
over, so the white-box attacks on the network itself are the adaptive
attacks. Three kinds, at L-infinity 1, 2, 4 and 8 grey levels, on the
500-image test split:

- `pgd`: torchattacks' PGD (50 steps, step eps/4, random start), pushing
  each image off the model's own clean answer;
- `apgd`: torchattacks' APGD (AutoAttack's step-size-free PGD, cross-entropy,
  50 steps), the same goal;
- `spoof`: an attack on the certificate itself (Ghiasi et al., ICLR 2020,
  "spoofed robustness certificates"): PGD on the interval bounds, maximising
  the worst-case margin of the *other* class over the box of the manifest's
  radius around the attacked image, so that the guard would certify the
  wrong answer. Our code; torchattacks has no such attack.

Inside the certified radius of the clean image no attack can flip a
certified answer: `medguard eval` counts silent flips inside and outside it.
Every image is rounded to uint8 and kept within eps of the clean image, as a
real image file would be; success is judged by onnxruntime on the ONNX file.

    ../venv-torch/bin/python tests/adversarial/ibp_attacks.py --data ../shared/data/pneumoniamnist/pneumoniamnist.npz

Writes sets-ibp/<attack>-<eps>.npz and ibp_attacks.json beside this script
(a few minutes on 2 cores).
"""

import argparse
import json
from importlib import util
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
import torchattacks
from onnx import numpy_helper

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
MODEL_DIR = ROOT / "models" / "pneumonia-ibp"
SEED = 20261204
EPS = (1, 2, 4, 8)

_spec = util.spec_from_file_location("ibp_train", MODEL_DIR / "train.py")
ibp = util.module_from_spec(_spec)
_spec.loader.exec_module(ibp)


def twin():
    """models/pneumonia-ibp/model.onnx as its training module's network,
    every weight read from the ONNX initializers."""
    w = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in onnx.load(str(MODEL_DIR / "model.onnx")).graph.initializer}
    model = ibp.IbpCnn(float(w["mean"]), float(w["std"]), ibp.TRAIN["width"])
    state = {k: w[k] for k in model.state_dict()}
    model.load_state_dict(state)
    model.eval()
    return model


def onnx_logits(x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(MODEL_DIR / "model.onnx")).run(None, {"image": x})[0]


def spoof(model, x, wrong, eps, radius, steps=100):
    """PGD within eps of `x` maximising the interval lower bound of class
    `wrong` less the other class's upper bound over the box of `radius`
    around the attacked image: an image the guard would certify wrongly."""
    gen = torch.Generator().manual_seed(SEED)
    adv = (x + (torch.rand(x.shape, generator=gen) * 2 - 1) * eps).clamp(0, 1)
    step = eps / 8
    idx = torch.arange(len(x))
    for _ in range(steps):
        adv.requires_grad_(True)
        lo, hi = ibp.ibp_logits(model, adv, radius)
        margin = lo[idx, wrong] - hi[idx, 1 - wrong]
        # Past a certified margin of 1 there is nothing left to gain.
        loss = margin.clamp(max=1.0).sum()
        (grad,) = torch.autograd.grad(loss, adv)
        with torch.no_grad():
            adv = adv + step * grad.sign()
            adv = torch.min(torch.max(adv, x - eps), x + eps).clamp(0, 1)
    return adv.detach()


def to_u8(adv: torch.Tensor, clean_u8: np.ndarray, eps_levels: int) -> np.ndarray:
    """Rounded to 8 bits and kept within eps grey levels of the clean image."""
    a = np.rint(adv.detach().numpy()[:, 0] * 255.0)
    c = clean_u8.astype(np.float64)
    return np.clip(np.clip(a, c - eps_levels, c + eps_levels), 0, 255).astype(np.uint8)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--out", type=Path, default=HERE / "sets-ibp")
    args = ap.parse_args()
    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    d = np.load(args.data)
    images, labels = d["test_images"], d["test_labels"].ravel().astype(np.int64)
    x = torch.from_numpy(images[:, None].astype(np.float32) / 255.0)
    model = twin()
    with torch.no_grad():
        ours = model(x).numpy()
    theirs = onnx_logits(x.numpy())
    gap = float(np.abs(ours - theirs).max())
    assert gap < 1e-4, f"the twin differs from the ONNX model by {gap}"
    clean_pred = theirs.argmax(1)
    target = torch.from_numpy(clean_pred)
    radius = ibp.TARGET / 255
    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "model": "models/pneumonia-ibp/model.onnx",
        "images": len(images),
        "twin_max_abs_logit_gap": gap,
        "required_radius_linf": f"{ibp.TARGET}/255",
        "tools": {"torch": torch.__version__, "torchattacks": torchattacks.__version__, "onnxruntime": ort.__version__},
        "attacks": {},
    }
    for e in EPS:
        eps = e / 255
        made = {
            "pgd": torchattacks.PGD(model, eps=eps, alpha=eps / 4, steps=50, random_start=True),
            "apgd": torchattacks.APGD(model, norm="Linf", eps=eps, steps=50, n_restarts=1, loss="ce", seed=SEED),
        }
        for name, attack in made.items():
            made[name] = attack(x, target)
        made["spoof"] = spoof(model, x, 1 - target, eps, radius)
        for name, adv in made.items():
            adv_u8 = to_u8(adv, images, e)
            xa = adv_u8[:, None].astype(np.float32) / 255.0
            adv_pred = onnx_logits(xa).argmax(1)
            flipped = adv_pred != clean_pred
            # What the guard will certify, by the training module's IBP.
            with torch.no_grad():
                certified_class = ibp.verified(model, torch.from_numpy(xa), radius)
            spoofed = flipped & (certified_class == adv_pred)
            np.savez_compressed(
                args.out / f"{name}-{e}.npz",
                images=adv_u8,
                source_index=np.arange(len(images)),
                clean_pred=clean_pred,
                adv_pred=adv_pred,
                flipped=flipped,
                labels=labels,
            )
            linf = np.abs(adv_u8.astype(np.int64) - images.astype(np.int64)).max(axis=(1, 2))
            report["attacks"][f"{name}-{e}"] = {
                "eps": f"{e}/255",
                "flipped": float(flipped.mean()),
                "flipped_and_certified_at_the_requirement": float(spoofed.mean()),
                "max_linf_levels": int(linf.max()),
            }
            print(f"{name}-{e}", report["attacks"][f"{name}-{e}"], flush=True)
    (HERE / "ibp_attacks.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
