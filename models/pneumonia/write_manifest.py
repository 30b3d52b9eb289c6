"""Write manifest.json for model.onnx: digest, size, input spec and labels.

Run after train.py (which calls it), then `medguard calibrate` and
`medguard sign` (see models/trust/README.md). Standard library only.
"""

import hashlib
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(
    version: str = "1.0.0",
    expires: str = "2028-11-28T00:00:00Z",
    directory: Path = HERE,
    name: str = "pneumonia-cnn",
    extra: dict | None = None,
):
    """`extra` adds top-level sections (the certifiable model's
    `certification` and `training`)."""
    model = (directory / "model.onnx").read_bytes()
    manifest = {
        "schema": "medguard.manifest/v1",
        "name": name,
        "version": version,
        # Signed with the rest: a stale manifest cannot be replayed past this.
        "expires": expires,
        "model": {
            "file": "model.onnx",
            "sha256": hashlib.sha256(model).hexdigest(),
            "size": len(model),
        },
        "input": {
            "tensor": "image",
            "dtype": "float32",
            "shape": [None, 1, 28, 28],
            "range": [0.0, 1.0],
            "pixels": {"color": "luma-bt601", "scale": "unit-interval"},
        },
        "output": {"tensor": "logits", "kind": "logits", "labels": ["normal", "pneumonia"]},
        "max_batch": 64,
        # What the model takes as DICOM, and how a radiograph becomes its
        # 28x28 input: MedMNIST made the training images by centre-cropping
        # the short side and downscaling, so the guest does the same.
        "dicom": {
            "accepts": {
                "modality": ["CR", "DX"],
                "photometric_interpretation": ["MONOCHROME1", "MONOCHROME2"],
                "body_part_examined": ["CHEST"],
                "view_position": ["PA", "AP"],
            },
            "preprocessing": {
                "intensity": "voi-else-stored-range",
                "crop": "center-square",
                "resize": "area",
            },
            # The coded finding for the structured report (SNOMED CT).
            "report": {
                "finding": {"value": "233604007", "scheme": "SCT", "meaning": "Pneumonia"},
                "present_label": "pneumonia",
                "procedure": {"value": "399208008", "scheme": "SCT", "meaning": "Plain chest X-ray"},
            },
        },
    }
    manifest.update(extra or {})
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    main()
