"""Writes tests/data/calibration.npz: the 627 PneumoniaMNIST training images
that models/pneumonia/splits.json selects for calibration, in that order, as
`train_images` (uint8 [627, 28, 28]). With it the calibration test reproduces
the committed screening profile on a bare clone, without ../shared.

Usage: python tests/data/make_calibration_subset.py ../shared/data/pneumoniamnist/pneumoniamnist.npz
(numpy 2.1.3)."""
import json
import sys
from pathlib import Path

import numpy as np

root = Path(__file__).resolve().parents[2]
archive = np.load(sys.argv[1])
indices = json.loads((root / "models/pneumonia/splits.json").read_text())["calibration_indices"]
images = archive["train_images"][indices]
assert images.shape == (len(indices), 28, 28) and images.dtype == np.uint8
np.savez_compressed(root / "tests/data/calibration.npz", train_images=images)
print(f"wrote {images.shape[0]} images")
