"""The C ABI (``embed/include/medguard.h``) through ctypes: the one place
this package touches it. Every signature here mirrors the header; the
public classes in ``medguard/__init__.py`` are built on these alone."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

# medguard_status
OK, REFUSED, INVALID_ARGUMENT, ERROR, PANIC = 0, 1, 2, 3, 4
# medguard_verdict
VERDICTS = ("accept", "flag", "reject", "unscreened")
# medguard_options.policy
POLICY_ENFORCE, POLICY_FLAG_ONLY = 0, 1
# sample_type of medguard_classify_pixels
SAMPLES_U8, SAMPLES_U16, SAMPLES_F32 = 0, 1, 2

LIBRARY_NAME = "libmedguard_embed.so"
# MEDGUARD_ABI_VERSION of the header these signatures restate.
ABI_VERSION = 1
# medguard_input's INPUT_MAX_BYTES: files are read up to one byte past it,
# so that the library refuses a larger one with its own reason.
INPUT_MAX_BYTES = 64 << 20


class Options(ctypes.Structure):
    """``medguard_options``."""

    _fields_ = [
        ("fixed_seed", ctypes.c_uint8),
        ("seed", ctypes.c_uint64),
        ("policy", ctypes.c_uint32),
    ]


def _find() -> str:
    """``$MEDGUARD_LIBRARY``, else the copy inside this package, else the
    system's library path."""
    explicit = os.environ.get("MEDGUARD_LIBRARY")
    if explicit:
        return explicit
    bundled = Path(__file__).with_name(LIBRARY_NAME)
    if bundled.exists():
        return str(bundled)
    found = ctypes.util.find_library("medguard_embed")
    if found is None:
        raise ImportError(
            f"{LIBRARY_NAME} not found: build it with `cargo build --release -p medguard-embed` "
            "and set MEDGUARD_LIBRARY to its path (or copy it into the medguard package)"
        )
    return found


def _load() -> ctypes.CDLL:
    lib = ctypes.CDLL(_find())
    p, c, u32, u64, size = (
        ctypes.c_void_p,
        ctypes.c_char_p,
        ctypes.c_uint32,
        ctypes.c_uint64,
        ctypes.c_size_t,
    )
    out = ctypes.POINTER(ctypes.c_void_p)
    lib.medguard_abi_version.argtypes = []
    lib.medguard_abi_version.restype = u32
    found = lib.medguard_abi_version()
    if found != ABI_VERSION:
        raise ImportError(
            f"{lib._name} speaks medguard ABI {found}, this package ABI {ABI_VERSION}: "
            "use the library built from the same medguard release"
        )
    signatures = {
        "medguard_version": ([], c),
        "medguard_last_error": ([], c),
        "medguard_guard_open": ([c, c, out], ctypes.c_int),
        "medguard_guard_free": ([p], None),
        "medguard_guard_ledger_key": ([p], c),
        "medguard_admit": ([p, c, out], ctypes.c_int),
        "medguard_model_free": ([p], None),
        "medguard_model_prepare": ([p, p], ctypes.c_int),
        "medguard_model_name": ([p], c),
        "medguard_model_version": ([p], c),
        "medguard_model_sha256": ([p], c),
        "medguard_model_signer": ([p], c),
        "medguard_model_receipt_json": ([p], c),
        "medguard_model_input_size": (
            [p, ctypes.POINTER(u32), ctypes.POINTER(u32)],
            u32,
        ),
        "medguard_classify_pixels": (
            [p, p, p, size, u32, u32, u32, u32, ctypes.POINTER(Options), out],
            ctypes.c_int,
        ),
        "medguard_classify_file": (
            [p, p, p, size, ctypes.POINTER(Options), out],
            ctypes.c_int,
        ),
        "medguard_result_free": ([p], None),
        "medguard_result_count": ([p], size),
        "medguard_result_seed": ([p], u64),
        "medguard_result_image": ([p, size], p),
        "medguard_image_json": ([p], c),
    }
    for name, (args, result) in signatures.items():
        function = getattr(lib, name)
        function.argtypes = args
        function.restype = result
    return lib


lib = _load()
