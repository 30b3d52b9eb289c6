"""List pydicom's own test files with the attributes medguard's DICOM
acceptance checks, one JSON object per line, for the robustness test
(tests/suite/dicom.rs): it decodes each file in the sandbox under a profile
that accepts exactly what the file says, so every file reaches the pixel
decoder unless it is broken.

    python describe_test_files.py
"""

import json
import os

import pydicom

ROOT = os.path.join(os.path.dirname(pydicom.__file__), "data", "test_files")


def text(ds, keyword):
    try:
        value = ds.get(keyword, "")
        return "" if value is None else str(value).strip()
    except Exception:  # a broken file: the decoder will say so
        return ""


for folder, _, names in sorted(os.walk(ROOT)):
    for name in sorted(names):
        path = os.path.join(folder, name)
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        except Exception:
            ds = {}
        print(json.dumps({
            "path": path,
            "modality": text(ds, "Modality"),
            "photometric_interpretation": text(ds, "PhotometricInterpretation"),
            "body_part_examined": text(ds, "BodyPartExamined"),
            "view_position": text(ds, "ViewPosition"),
        }))
