"""Choose the screening statistics by measurement on the validation split.

Candidates are computed with onnxruntime on the deployed model.onnx, with the
same definitions as the Rust guest (guest/core/src/screen.rs): per-class
conformal p-values against the 627 held-out calibration images, combined with
the Cauchy combination test (p-values truncated at 0.99). Attacks come from
sets-val/ (make_attacks.py --split val); the test split is not looked at.

Writes selection.json and prints a table. Usage:
    python select_statistics.py --data ../shared/data/pneumoniamnist/pneumoniamnist.npz
"""

import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
from sklearn.metrics import roc_auc_score

HERE = Path(__file__).resolve().parent
MODEL = HERE.parent.parent / "models" / "pneumonia"
SESSION = ort.InferenceSession(str(MODEL / "model.onnx"))
SEED = 20261128


def logits(x):
    return np.concatenate(
        [SESSION.run(None, {"image": x[i : i + 256, None].astype(np.float32)})[0] for i in range(0, len(x), 256)]
    )


def shifted(x, window):
    """Every (dy, dx) shift of a window, edge-repeated; even windows extend right/down."""
    before = (window - 1) // 2
    after = window - 1 - before
    p = np.pad(x, ((0, 0), (before, after), (before, after)), mode="edge")
    h, w = x.shape[1:]
    return np.stack([p[:, dy : dy + h, dx : dx + w] for dy in range(window) for dx in range(window)])


def median(x, window):
    return np.median(shifted(x, window), axis=0)


def laplacian_energy(x):
    s = shifted(x, 3)  # index 4 is the centre; 1, 3, 5, 7 the 4-neighbours
    return ((4 * s[4] - s[1] - s[3] - s[5] - s[7]) ** 2).mean(axis=(1, 2))


def median_residual(x):
    return np.abs(x - median(x, 3)).mean(axis=(1, 2))


def dct_matrix(n):
    k = np.arange(n)
    m = np.cos(np.pi * (2 * k[None] + 1) * k[:, None] / (2 * n))
    m[0] /= np.sqrt(2)
    return m * np.sqrt(2 / n)


def dct_high_band(x):
    """Share of non-DC DCT energy in the high band (u + v >= n)."""
    n = x.shape[1]
    d = dct_matrix(n)
    e = np.einsum("ij,njk,lk->nil", d, x, d) ** 2
    e[:, 0, 0] = 0
    u, v = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    return e[:, (u + v) >= n].sum(1) / (e.reshape(len(x), -1).sum(1) + 1e-12)


def mscn_variance(x):
    """Variance of mean-subtracted, contrast-normalised coefficients (3x3 windows)."""
    s = shifted(x, 3)
    mu = s.mean(0)
    sd = np.sqrt(((s - mu) ** 2).mean(0))
    return (((x - mu) / (sd + 1 / 255)) ** 2).mean(axis=(1, 2))


def alternation(u8):
    """Share of neighbour-difference pairs that change sign (a histogram statistic)."""
    v = u8.astype(int)
    dh, dv = np.diff(v, axis=2), np.diff(v, axis=1)
    return ((dh[:, :, :-1] * dh[:, :, 1:] < 0).mean(axis=(1, 2)) + (dv[:, :-1] * dv[:, 1:] < 0).mean(axis=(1, 2))) / 2


def candidates(u8, seed):
    """Candidate statistic values and the predicted class, per image."""
    x = u8.astype(np.float64) / 255.0
    z = logits(x)
    pred = z.argmax(1)
    rows = np.arange(len(x))

    def margin(zz):
        own = zz[rows, pred]
        other = np.where(np.arange(zz.shape[1])[None] == pred[:, None], -np.inf, zz).max(1)
        return own - other

    base = margin(z)
    out = {
        "margin": base,
        "laplacian-energy": laplacian_energy(x),
        "median-residual": median_residual(x),
        "dct-high-band": dct_high_band(x),
        "mscn-variance": mscn_variance(x),
        "difference-alternation": alternation(u8),
    }
    for w in (2, 3):
        out[f"squeeze-median-{w}x{w}"] = base - margin(logits(median(x, w)))
    for bits in (4, 5):
        q = 2**bits - 1
        out[f"squeeze-bits-{bits}"] = base - margin(logits(np.round(x * q) / q))
    rng = np.random.default_rng(seed)
    for sigma in (1, 2, 4):
        drops = [base - margin(logits(np.clip(x + rng.normal(0, sigma / 255, x.shape), 0, 1))) for _ in range(4)]
        out[f"noise-response-{sigma}of255x1"] = drops[0]
        out[f"noise-response-{sigma}of255x4"] = np.mean(drops, axis=0)
    return out, pred


SIDES = {"margin": "both"}


def conformal(ref, ref_pred, values, pred, side, loo=False):
    p = np.empty(len(values))
    for i, (v, c) in enumerate(zip(values, pred)):
        r = ref[ref_pred == c]
        n = len(r) - (1 if loo else 0)
        up = (1 + (r >= v).sum() - (1 if loo else 0)) / (n + 1)
        lo = (1 + (r <= v).sum() - (1 if loo else 0)) / (n + 1)
        p[i] = up if side == "upper" else min(1.0, 2 * min(up, lo))
    return p


def cauchy(ps):
    t = np.mean([np.tan((0.5 - np.clip(p, 1e-15, 0.99)) * np.pi) for p in ps], axis=0)
    return 0.5 - np.arctan(t) / np.pi


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, type=Path)
    args = ap.parse_args()
    d = np.load(args.data)
    idx = json.loads((MODEL / "splits.json").read_text())["calibration_indices"]
    cal, cal_pred = candidates(d["train_images"][idx], SEED)
    names = list(cal)
    clean, clean_pred = candidates(d["val_images"], SEED + 1)

    def pvalues(vals, pred, loo=False):
        return {n: conformal(cal[n], cal_pred, vals[n], pred, SIDES.get(n, "upper"), loo) for n in names}

    clean_p = pvalues(clean, clean_pred)
    cal_p = pvalues(cal, cal_pred, loo=True)
    sets = {}
    for f in sorted((HERE / "sets-val").glob("*.npz")):
        a = np.load(f)
        imgs = a["images"][a["flipped"]] if "flipped" in a.files else a["images"]
        v, p = candidates(imgs, SEED + 2)
        sets[f.stem] = pvalues(v, p)

    def auc(c, a):
        return float(roc_auc_score(np.r_[np.zeros(len(c)), np.ones(len(a))], -np.r_[c, a]))

    single = {s: {n: auc(clean_p[n], sets[s][n]) for n in names} for s in sets}
    combos = [
        ["squeeze-median-2x2"],
        ["margin", "squeeze-median-2x2"],
        ["margin", "squeeze-median-2x2", "noise-response-2of255x1"],
        ["margin", "squeeze-median-2x2", "noise-response-2of255x4"],
        ["margin", "squeeze-median-2x2", "noise-response-4of255x1"],
        ["margin", "squeeze-median-2x2", "squeeze-median-3x3"],
        ["margin", "squeeze-median-2x2", "squeeze-bits-5"],
        ["margin", "squeeze-median-2x2", "noise-response-2of255x1", "median-residual"],
        ["margin", "squeeze-median-2x2", "noise-response-2of255x1", "laplacian-energy"],
        ["margin", "squeeze-median-2x2", "difference-alternation"],
        ["margin", "squeeze-median-2x2", "mscn-variance"],
    ]
    cost = lambda combo: 1 + sum(  # noqa: E731
        0 if n in ("margin", "median-residual", "laplacian-energy", "dct-high-band", "mscn-variance", "difference-alternation") else int(n.split("x")[-1]) if "noise" in n else 1
        for n in combo
    )
    combined = []
    for combo in combos:
        c = cauchy([clean_p[n] for n in combo])
        flag = np.sort(cauchy([cal_p[n] for n in combo]))[int(0.05 * (len(cal_pred) + 1)) - 1]
        row = {"statistics": combo, "inferences_per_image": cost(combo), "clean_val_flagged": float((c <= flag).mean())}
        for s, ps in sets.items():
            a = cauchy([ps[n] for n in combo])
            row[s] = auc(c, a) if not s.startswith("corruption") else float((a <= flag).mean())
        combined.append(row)
    (HERE / "selection.json").write_text(json.dumps({"single_auc": single, "combined": combined}, indent=1) + "\n")

    attacks = [s for s in sets if not s.startswith("corruption")]
    print("single-statistic ROC-AUC on the validation split (clean val vs flipped attacks)")
    print(f"{'statistic':28s}" + "".join(f"{s:>10s}" for s in attacks))
    for n in names:
        print(f"{n:28s}" + "".join(f"{single[s][n]:10.3f}" for s in attacks))
    print("\ncombined (Cauchy) ROC-AUC; corruption columns are flag rates at the calibrated 5% threshold")
    for row in combined:
        print(f"{'+'.join(row['statistics'])} ({row['inferences_per_image']} inferences, clean flagged {row['clean_val_flagged']:.3f})")
        print("   " + " ".join(f"{s}:{row[s]:.3f}" for s in sets))


if __name__ == "__main__":
    main()
