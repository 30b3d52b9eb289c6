"""Carve the small regression set that CI screens on every run.

From the committed test-split sets (sets/), take a seeded random subset of
flipped images of a few attacks and of the clean test images, and write them
under ci/ in the layout `medguard eval` reads. Usage:
    python make_ci_subset.py --data ../shared/data/pneumoniamnist/pneumoniamnist.npz
"""

import argparse
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ATTACKS = ("pgd-2", "pgd-4", "pgd-8", "cw-l2", "deepfool")
PER_ATTACK = 60
CLEAN = 300
SEED = 20261128


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, type=Path)
    args = ap.parse_args()
    rng = np.random.default_rng(SEED)
    out = HERE / "ci"
    (out / "sets").mkdir(parents=True, exist_ok=True)
    d = np.load(args.data)
    keep = np.sort(rng.choice(len(d["test_images"]), CLEAN, replace=False))
    np.savez_compressed(out / "clean.npz", test_images=d["test_images"][keep], test_labels=d["test_labels"][keep])
    for name in ATTACKS:
        a = np.load(HERE / "sets" / f"{name}.npz")
        idx = np.flatnonzero(a["flipped"])
        idx = np.sort(rng.choice(idx, min(PER_ATTACK, len(idx)), replace=False))
        np.savez_compressed(
            out / "sets" / f"{name}.npz",
            images=a["images"][idx],
            flipped=np.ones(len(idx), dtype=bool),
            source_index=a["source_index"][idx],
        )
        print(f"{name}: {len(idx)} flipped images")
    print(f"clean: {CLEAN} test images")


if __name__ == "__main__":
    main()
