"""Generate the adversarial and benign-corruption sets that medguard's screening
is measured against (issue 3), with third-party attack implementations.

    ../venv-torch/bin/pip install -r tests/adversarial/requirements.txt
    ../venv-torch/bin/python tests/adversarial/make_attacks.py --data ../shared/data/pneumoniamnist/pneumoniamnist.npz

Attacks (adversarial-robustness-toolbox, on the folded PyTorch twin of the
exact model.onnx): FGSM and PGD-Linf at eps 1, 2, 4, 8 /255 (PGD: 50 steps of
eps/8, 3 random restarts), Carlini-Wagner L2, DeepFool. Every adversarial image
is rounded to uint8, as a real image file would be, and judged by the deployed
ONNX model (onnxruntime): only images whose prediction flips count as
successful attacks. Benign corruptions use MedMNIST-C-like strengths.

Writes sets/<name>.npz (uint8 images + bookkeeping) and attacks.json (success
rates, parameters, tool versions) beside this script. The test split is the
attacked population; the screening's calibration never sees it.
"""

import argparse
import io
import json
from pathlib import Path

import art
import numpy as np
import torch
from art.attacks.evasion import CarliniL2Method, DeepFool, FastGradientMethod, ProjectedGradientDescent
from art.estimators.classification import PyTorchClassifier
from PIL import Image, ImageFilter

from twin import FoldedTwin, check_twin, onnx_logits

HERE = Path(__file__).resolve().parent
SEED = 20261128


def predict_u8(images_u8: np.ndarray) -> np.ndarray:
    return onnx_logits(images_u8[:, None].astype(np.float32) / 255.0).argmax(1)


def to_u8(x_unit: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x_unit[:, 0] * 255.0), 0, 255).astype(np.uint8)


def corruptions(images: np.ndarray, rng: np.random.Generator) -> dict:
    """Benign corruptions at mild strengths, MedMNIST-C style (severity 1-2 of 5)."""
    x = images.astype(np.float64) / 255.0
    out = {}
    for sigma in (0.02, 0.04):
        out[f"gaussian-noise-{sigma}"] = x + rng.normal(0, sigma, x.shape)
    for factor in (0.8, 0.6):
        m = x.mean(axis=(1, 2), keepdims=True)
        out[f"contrast-{factor}"] = (x - m) * factor + m
    for gamma in (0.8, 1.25):
        out[f"gamma-{gamma}"] = x**gamma

    def pil_map(fn):
        return np.stack([np.asarray(fn(Image.fromarray(im)), dtype=np.float64) / 255.0 for im in images])

    for quality in (75, 50):
        def jpeg(im, q=quality):
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=q)
            return Image.open(io.BytesIO(buf.getvalue())).convert("L")
        out[f"jpeg-{quality}"] = pil_map(jpeg)
    for radius in (0.5, 0.8):
        out[f"blur-{radius}"] = pil_map(lambda im, r=radius: im.filter(ImageFilter.GaussianBlur(r)))
    return {k: np.clip(np.round(v * 255.0), 0, 255).astype(np.uint8) for k, v in out.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument(
        "--split", choices=("test", "val"), default="test",
        help="test: the evaluation sets (sets/); val: the sets used to choose the statistics (sets-val/)",
    )
    ap.add_argument("--only", nargs="*", help="generate only these attacks (default: all)")
    args = ap.parse_args()
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    torch.set_num_threads(2)

    d = np.load(args.data)
    images, labels = d[f"{args.split}_images"], d[f"{args.split}_labels"].ravel()
    twin = FoldedTwin()
    twin_diff = check_twin(twin, images)
    assert twin_diff < 1e-4, f"twin disagrees with model.onnx by {twin_diff}"
    clean_pred = predict_u8(images)

    clf = PyTorchClassifier(
        model=twin,
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=(1, 28, 28),
        nb_classes=2,
        clip_values=(0.0, 1.0),
        device_type="cpu",
    )
    x = images[:, None].astype(np.float32) / 255.0
    attacks = {}
    for e in (1, 2, 4, 8):
        eps = e / 255.0
        attacks[f"fgsm-{e}"] = (FastGradientMethod(clf, norm=np.inf, eps=eps, batch_size=128), {"eps": f"{e}/255"})
        attacks[f"pgd-{e}"] = (
            ProjectedGradientDescent(
                clf, norm=np.inf, eps=eps, eps_step=eps / 8, max_iter=50, num_random_init=3, batch_size=128, verbose=False
            ),
            {"eps": f"{e}/255", "steps": 50, "step": "eps/8", "restarts": 3},
        )
    attacks["cw-l2"] = (
        CarliniL2Method(clf, confidence=0.0, max_iter=50, binary_search_steps=5, learning_rate=0.01, batch_size=128, verbose=False),
        {"confidence": 0, "max_iter": 50, "binary_search_steps": 5},
    )
    attacks["deepfool"] = (
        DeepFool(clf, max_iter=50, epsilon=0.02, nb_grads=2, batch_size=128, verbose=False),
        {"max_iter": 50, "overshoot": 0.02},
    )

    if args.only:
        attacks = {k: v for k, v in attacks.items() if k in args.only}
    sets = HERE / ("sets" if args.split == "test" else "sets-val")
    sets.mkdir(exist_ok=True)
    report = {
        "tools": {"adversarial-robustness-toolbox": art.__version__, "torch": torch.__version__},
        "population": f"{args.split} split, {len(images)} images",
        "twin_max_logit_diff_vs_onnx": twin_diff,
        "clean_accuracy": float((clean_pred == labels).mean()),
        "attacks": {},
        "corruptions": {},
    }
    for name, (attack, params) in attacks.items():
        adv = to_u8(attack.generate(x=x, y=clean_pred))
        adv_pred = predict_u8(adv)
        flipped = adv_pred != clean_pred
        linf = np.abs(adv.astype(int) - images.astype(int)).max(axis=(1, 2))
        l2 = np.sqrt((((adv.astype(np.float64) - images) / 255.0) ** 2).sum(axis=(1, 2)))
        np.savez_compressed(
            sets / f"{name}.npz", images=adv, source_index=np.arange(len(images)), clean_pred=clean_pred,
            adv_pred=adv_pred, flipped=flipped, labels=labels,
        )
        report["attacks"][name] = {
            "params": params,
            "success_rate": float(flipped.mean()),
            "succeeded": int(flipped.sum()),
            "median_linf_of_successes_255": float(np.median(linf[flipped])) if flipped.any() else None,
            "median_l2_of_successes": float(np.median(l2[flipped])) if flipped.any() else None,
        }
        print(f"{name:10s} success {flipped.mean():.3f} ({flipped.sum()}/{len(flipped)})", flush=True)

    for name, imgs in corruptions(images, np.random.default_rng(SEED)).items():
        pred = predict_u8(imgs)
        np.savez_compressed(sets / f"corruption-{name}.npz", images=imgs, clean_pred=clean_pred, pred=pred, labels=labels)
        report["corruptions"][name] = {"prediction_changed": float((pred != clean_pred).mean()), "accuracy": float((pred == labels).mean())}
        print(f"corruption {name:22s} changed {np.mean(pred != clean_pred):.3f}", flush=True)

    (HERE / ("attacks.json" if args.split == "test" else "attacks-val.json")).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
