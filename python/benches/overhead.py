"""What the Python layer costs per image over the C call it wraps: the same
28x28 image through ``Model.classify`` (numpy checks, ctypes, JSON into a
Result) and through the bare ctypes call of ``medguard_classify_pixels``
(plus reading the JSON text and freeing, as a C caller does), interleaved,
200 times each after a warm-up, in one process. Prints the medians and their
ratio and adds them to the JSON file named on the command line.

    python overhead.py DATA_DIR POLICY.toml MODEL_DIR CLEAN.npz OUT.json
"""

from __future__ import annotations

import ctypes
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import medguard
from medguard import _native
from medguard._native import lib

ROUNDS = 200


def main(data_dir: str, policy: str, model_dir: str, clean: str, out: str) -> None:
    with np.load(clean) as npz:
        image = np.ascontiguousarray(npz["test_images"][0])
    with medguard.Guard(data_dir, policy) as guard:
        model = guard.admit(model_dir)
        options = _native.Options(1, 7, _native.POLICY_ENFORCE)

        def python_call() -> None:
            model.classify(image, seed=7)

        def ctypes_call() -> None:
            result = ctypes.c_void_p()
            status = lib.medguard_classify_pixels(
                guard._handle, model._handle, image.ctypes.data, image.nbytes,
                _native.SAMPLES_U8, 1, 28, 28, ctypes.byref(options), ctypes.byref(result),
            )
            assert status == _native.OK
            lib.medguard_image_json(lib.medguard_result_image(result.value, 0))
            lib.medguard_result_free(result.value)

        def interleaved() -> tuple[float, float]:
            for _ in range(10):
                python_call()
                ctypes_call()
            py, c = [], []
            for _ in range(ROUNDS):
                t = time.perf_counter()
                python_call()
                py.append(time.perf_counter() - t)
                t = time.perf_counter()
                ctypes_call()
                c.append(time.perf_counter() - t)
            return statistics.median(py) * 1e3, statistics.median(c) * 1e3

        py_ms, c_ms = interleaved()
        model.prepare()
        py_prepared_ms, c_prepared_ms = interleaved()
    print(f"per image, median of {ROUNDS} interleaved calls; model loaded in each sandbox / prepared")
    print(f"  C ABI through bare ctypes: {c_ms:.3f} ms / {c_prepared_ms:.3f} ms")
    print(f"  Python package (Model.classify): {py_ms:.3f} ms / {py_prepared_ms:.3f} ms")
    print(f"  Python/C: {py_ms / c_ms:.3f}x / {py_prepared_ms / c_prepared_ms:.3f}x")
    path = Path(out)
    figures = json.loads(path.read_text()) if path.exists() else []
    figures += [
        {"name": "embed.ctypes_per_image", "value": c_ms, "unit": "ms"},
        {"name": "embed.python_per_image", "value": py_ms, "unit": "ms"},
        {"name": "embed.python_over_c", "value": py_ms / c_ms, "unit": "ratio"},
        {"name": "embed.ctypes_per_image_prepared", "value": c_prepared_ms, "unit": "ms"},
        {"name": "embed.python_per_image_prepared", "value": py_prepared_ms, "unit": "ms"},
        {"name": "embed.python_over_c_prepared", "value": py_prepared_ms / c_prepared_ms, "unit": "ratio"},
    ]
    path.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    if len(sys.argv) != 6:
        sys.exit(__doc__)
    main(*sys.argv[1:])
