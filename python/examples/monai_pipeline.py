"""medguard as one step of a MONAI-style inference pipeline.

MONAI pipelines are chains of dictionary transforms: each takes a dict
(``{"image": ..., "meta": ...}``) and returns it with keys added. Here the
guard is such a transform: the model is admitted once, when the pipeline is
built; every image is then screened and classified in medguard's sandbox,
and the dict gains the verdict, the label (None when the guard withheld
it) and the ledger receipt. With MONAI installed the step is a real
``monai.transforms.MapTransform`` inside ``monai.transforms.Compose``;
without it, the same protocol with a three-line Compose.

    python monai_pipeline.py DATA_DIR POLICY.toml MODEL_DIR IMAGE.npy...

prints one JSON line per image: file, verdict, p-value, label, ledger index.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np

import medguard

try:  # the real thing when it is there
    from monai.transforms import Compose, MapTransform
except ImportError:  # the same protocol, for pipelines without MONAI

    class MapTransform:  # type: ignore[no-redef]
        def __init__(self, keys: Sequence[Hashable] | Hashable) -> None:
            self.keys = tuple(keys) if isinstance(keys, (list, tuple)) else (keys,)

    class Compose:  # type: ignore[no-redef]
        def __init__(self, transforms: Sequence[Callable[[Any], Any]]) -> None:
            self.transforms = list(transforms)

        def __call__(self, data: Any) -> Any:
            for transform in self.transforms:
                data = transform(data)
            return data


class LoadNpyd(MapTransform):
    """Reads the file named under each key into a 2-D array (a stand-in for
    MONAI's LoadImaged, which needs an imaging backend)."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        for key in self.keys:
            out[f"{key}_path"] = out[key]
            out[key] = np.load(out[key])
        return out


class MedguardClassifyd(MapTransform):
    """Screens and classifies the image under each key with an admitted
    medguard model. Adds ``<key>_verdict``, ``<key>_label`` (None when
    withheld), ``<key>_probabilities`` and ``<key>_receipt``. A refused input
    raises ``medguard.InputRefused``, as a bad input to any transform would."""

    def __init__(self, keys: Sequence[Hashable] | Hashable, model: medguard.Model) -> None:
        super().__init__(keys)
        self.model = model

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        for key in self.keys:
            result = self.model.classify(out[key])
            out[f"{key}_verdict"] = result.verdict
            out[f"{key}_p_value"] = result.p_value
            out[f"{key}_label"] = result.label
            out[f"{key}_probabilities"] = result.probabilities
            out[f"{key}_receipt"] = result.receipt
        return out


def main(argv: list[str]) -> int:
    if len(argv) < 5:
        print(__doc__, file=sys.stderr)
        return 2
    data_dir, policy, model_dir, *images = argv[1:]
    with medguard.Guard(data_dir, policy) as guard:
        model = guard.admit(model_dir)  # once: a refused model stops here
        pipeline = Compose([LoadNpyd("image"), MedguardClassifyd("image", model)])
        status = 0
        for path in images:
            item = pipeline({"image": path})
            if item["image_verdict"] is medguard.Verdict.REJECT:
                status = 1
            print(
                json.dumps(
                    {
                        "file": item["image_path"],
                        "verdict": item["image_verdict"].value,
                        "p_value": item["image_p_value"],
                        "label": item["image_label"],
                        "ledger_index": item["image_receipt"]["index"],
                    }
                )
            )
        return status


if __name__ == "__main__":
    sys.exit(main(sys.argv))
