"""medguard for Python pipelines: admit a signed model under a trust policy,
then screen and classify images in medguard's WebAssembly sandbox, each
result recorded in the tamper-evident ledger and returned with its receipt.

    import medguard

    with medguard.Guard("/var/lib/medguard", "/etc/medguard/policy.toml") as guard:
        model = guard.admit("/models/pneumonia")
        result = model.classify(image)          # a 2-D uint8/uint16/float32 array
        if result.label is None:                # rejected: no prediction
            ...

This is a thin layer over the C library (``libmedguard_embed.so``): the
admission, sandbox, screening and ledger are the ``medguard`` CLI's own, and
so are the answers and the one-line reasons of its exceptions.

Threads: a guard and its models may be used from several threads at once
(the C calls release the GIL, and every classification runs in a sandbox of
its own).
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import json
import os
import stat
import threading
import warnings
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NoReturn, Union

import numpy as np
import numpy.typing as npt

from . import _native
from ._native import lib

__all__ = [
    "Guard",
    "GuardFailure",
    "InputRefused",
    "InvalidArgument",
    "MedguardError",
    "Model",
    "ModelRefused",
    "Result",
    "Verdict",
    "__version__",
]

__version__: str = lib.medguard_version().decode()

PathLike = Union[str, "os.PathLike[str]"]


class MedguardError(Exception):
    """Anything medguard did not do; the message is the CLI's one-line reason."""


class ModelRefused(MedguardError):
    """The model was not admitted under the trust policy (recorded in the ledger)."""


class InputRefused(MedguardError):
    """The input is not one the model takes (size, format, range); the guard goes on."""


class InvalidArgument(MedguardError, ValueError):
    """The call itself was wrong (a closed guard, a model of another guard)."""


class GuardFailure(MedguardError):
    """The guard could not do its work (ledger or sandbox); stop using it."""


class Verdict(str, enum.Enum):
    """The screening verdict."""

    ACCEPT = "accept"
    FLAG = "flag"
    REJECT = "reject"
    UNSCREENED = "unscreened"


@dataclass(frozen=True)
class Result:
    """One image's result: what ``medguard predict --json`` prints for it."""

    verdict: Verdict
    """The screening verdict."""
    p_value: float | None
    """Combined p-value in [0, 1], lower is more suspicious; None when unscreened."""
    label: str | None
    """The predicted label; None when withheld (rejected under the enforce policy)."""
    probabilities: dict[str, float] | None
    """Probability per label; None when withheld."""
    statistics: dict[str, dict[str, float]]
    """Each screening statistic's value and p-value."""
    seed: int
    """The seed of the screening's noise draws; pass it again to reproduce the verdict."""
    receipt: dict[str, Any]
    """The ledger entry, its inclusion proof and signed checkpoint."""
    raw: dict[str, Any] = field(repr=False)
    """The whole JSON object, as ``medguard ledger verify-receipt`` checks it."""

    @classmethod
    def _from_json(cls, text: str) -> Result:
        raw = json.loads(text)
        return cls(
            verdict=Verdict(raw["verdict"]),
            p_value=raw["p_value"],
            label=raw["label"],
            probabilities=raw["probabilities"],
            statistics=raw["statistics"],
            seed=raw["seed"],
            receipt=raw["receipt"],
            raw=raw,
        )


_ERRORS = {
    _native.REFUSED: InputRefused,
    _native.INVALID_ARGUMENT: InvalidArgument,
    _native.ERROR: GuardFailure,
    _native.PANIC: GuardFailure,
}


def _check(status: int, refused: type[MedguardError] = InputRefused) -> None:
    if status == _native.OK:
        return
    message = (lib.medguard_last_error() or b"unknown error").decode(errors="replace")
    error = refused if status == _native.REFUSED else _ERRORS.get(status, GuardFailure)
    raise error(message)


def _path(value: PathLike) -> bytes:
    encoded = os.fsencode(value)
    if not encoded:
        raise ValueError("empty path")
    if b"\0" in encoded:
        # C would stop at the NUL and act on a shorter path.
        raise ValueError(f"path contains a NUL byte: {value!r}")
    return encoded


# Guards and models alive in this process: a forked child must not use
# them (it shares the parent's ledger lock, not its sandbox threads), nor
# free them. The library refuses such calls too; this says so earlier.
_LIVE: weakref.WeakSet[Any] = weakref.WeakSet()


def _forget_after_fork() -> None:
    for handle_owner in list(_LIVE):
        handle_owner._orphan()


os.register_at_fork(after_in_child=_forget_after_fork)


class _NotPicklable:
    def __reduce__(self) -> NoReturn:
        raise TypeError(
            f"a medguard {type(self).__name__} belongs to the process that opened it; "
            "keep classification in that process, or give each process a Guard on its own data directory"
        )


class Guard(_NotPicklable):
    """A data directory (its ledger and rollback marks) and a trust policy,
    with a started sandbox. ``close()`` it (or use ``with``) when done; the
    models it admitted can classify no more. Without ``close()``, it stays
    open as long as it or one of its models is referenced.

    The guard holds its data directory's ledger exclusively (one writer per
    ledger, as for ``medguard serve``): another process, or the CLI, cannot
    open the same data directory while it is open. A guard belongs to its
    process: it does not pickle, and a forked child cannot use it (and keeps
    the parent's ledger lock until it exits); worker processes that need
    their own guards need their own data directories."""

    def __init__(self, data_dir: PathLike | None, trust_policy: PathLike) -> None:
        self._handle: int | None = None
        self._gone = "this guard is closed"
        self._in_flight = 0
        self._free_when_idle: int | None = None
        # Re-entrant: a signal handler may close the guard on the thread
        # that is inside a call with it.
        self._state = threading.RLock()
        handle = ctypes.c_void_p()
        _check(
            lib.medguard_guard_open(
                None if data_dir is None else _path(data_dir),
                _path(trust_policy),
                ctypes.byref(handle),
            ),
            refused=GuardFailure,
        )
        self._handle = handle.value
        _LIVE.add(self)

    @property
    def ledger_key(self) -> str:
        """The ledger's public key, which verifies every receipt offline
        (``medguard ledger verify-receipt RECEIPT --key FILE``)."""
        with self._use() as handle:
            key: bytes = lib.medguard_guard_ledger_key(handle)
            return key.decode()

    def admit(self, model_dir: PathLike) -> Model:
        """Admits the signed model directory under the trust policy (raises
        ``ModelRefused`` with the reason) and loads it into the sandbox once."""
        path = _path(model_dir)
        handle = ctypes.c_void_p()
        with self._use() as guard:
            _check(lib.medguard_admit(guard, path, ctypes.byref(handle)), refused=ModelRefused)
        return Model(self, handle.value)

    def close(self) -> None:
        """Closes the guard: no new call starts with it. It is freed at once,
        or by the last call still in flight on another thread when that one
        ends; ``close()`` never waits (a signal handler or finalizer may call
        it from inside a call on the same thread)."""
        with self._state:
            handle, self._handle = self._handle, None
            if handle is None:
                return
            if self._in_flight:
                self._free_when_idle = handle
                return
        lib.medguard_guard_free(handle)

    @contextlib.contextmanager
    def _use(self) -> Iterator[int]:
        """The handle, kept alive until the block ends (a concurrent
        ``close()`` leaves freeing it to the last call in flight)."""
        entered = False
        try:
            with self._state:
                handle = self._handle
                if handle is None:
                    raise InvalidArgument(self._gone)
                self._in_flight += 1
                entered = True
            yield handle
        finally:
            if entered:
                idle = None
                with self._state:
                    self._in_flight = max(0, self._in_flight - 1)
                    if self._in_flight == 0:
                        idle, self._free_when_idle = self._free_when_idle, None
                if idle is not None:
                    lib.medguard_guard_free(idle)

    def _orphan(self) -> None:
        # The parent's handle, never used nor freed here; a lock another
        # thread held at the fork would never be released in this process.
        self._handle = None
        self._gone = "this guard belongs to the process that opened it (this one is a fork of it)"
        self._in_flight = 0
        self._free_when_idle = None
        self._state = threading.RLock()

    def __enter__(self) -> Guard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_handle", None) is not None and lib is not None:
            lib.medguard_guard_free(self._handle)
            self._handle = None


ImageArray = npt.NDArray[Union[np.uint8, np.uint16, np.float32, np.float64]]


class Model(_NotPicklable):
    """A model its guard admitted. Made by ``Guard.admit``."""

    def __init__(self, guard: Guard, handle: int | None) -> None:
        self._guard = guard  # keeps the guard alive as long as the model
        self._handle = handle
        _LIVE.add(self)

        def text(accessor: Callable[[int | None], bytes | None]) -> str:
            return (accessor(handle) or b"").decode()

        self.name: str = text(lib.medguard_model_name)
        """The manifest's name."""
        self.version: str = text(lib.medguard_model_version)
        """The manifest's version."""
        self.sha256: str = text(lib.medguard_model_sha256)
        """SHA-256 of the admitted model file."""
        self.signer: str = text(lib.medguard_model_signer)
        """The signing key: the policy's name for it and its fingerprint."""
        self.receipt: dict[str, Any] = json.loads(text(lib.medguard_model_receipt_json))
        """The receipt of the admission's ledger entry."""
        height, width = ctypes.c_uint32(), ctypes.c_uint32()
        self.max_batch: int = lib.medguard_model_input_size(
            handle, ctypes.byref(height), ctypes.byref(width)
        )
        """The most images one ``classify_batch`` call takes."""
        self.input_size: tuple[int, int] = (height.value, width.value)
        """(height, width) of the images the model takes."""

    def prepare(self) -> bool:
        """Readies a snapshot of a sandbox with this model loaded, so that
        every later classification starts in microseconds instead of
        loading the model. Optional. The first preparation of a model takes
        tens of seconds and is cached; later ones (any process with the same
        cache) a fraction of a second. Returns False, with a warning giving
        the reason, when no snapshot could be taken: the model then still
        classifies, loading itself each time."""
        with self._guard._use() as guard:
            status = lib.medguard_model_prepare(guard, self._live())
            if status == _native.REFUSED:
                reason = (lib.medguard_last_error() or b"").decode(errors="replace")
                warnings.warn(f"medguard: {reason}", RuntimeWarning, stacklevel=2)
                return False
            _check(status)
        return True

    def classify(
        self, image: ImageArray, *, seed: int | None = None, policy: str = "enforce"
    ) -> Result:
        """Screens and classifies one image: a 2-D array of gray levels
        (uint8 or uint16, mapped as a PNG of the same pixels would be) or of
        tensor values (float32/float64), at the model's ``input_size``.
        ``seed`` reproduces an earlier verdict; ``policy`` is ``"enforce"``
        (a rejected image gets no label) or ``"flag-only"``."""
        array = np.asarray(image)
        if array.ndim != 2:
            raise ValueError(f"classify takes one 2-D image; got shape {array.shape} (see classify_batch)")
        return self.classify_batch(array[np.newaxis], seed=seed, policy=policy)[0]

    def classify_batch(
        self, images: ImageArray, *, seed: int | None = None, policy: str = "enforce"
    ) -> list[Result]:
        """``classify`` for a batch, shape (N, H, W), N up to ``max_batch``:
        one sandbox, one ledger commit."""
        array = np.asarray(images)
        kinds: dict[tuple[str, int], tuple[int, np.dtype[Any]]] = {
            ("u", 1): (_native.SAMPLES_U8, np.dtype(np.uint8)),
            ("u", 2): (_native.SAMPLES_U16, np.dtype("=u2")),
            ("f", 4): (_native.SAMPLES_F32, np.dtype("=f4")),
            ("f", 8): (_native.SAMPLES_F32, np.dtype("=f4")),
        }
        if (array.dtype.kind, array.dtype.itemsize) not in kinds:
            raise TypeError(f"images must be uint8, uint16 or float arrays, not {array.dtype}")
        kind, native = kinds[array.dtype.kind, array.dtype.itemsize]
        if array.ndim != 3:
            raise ValueError(f"a batch has shape (N, H, W); got {array.shape}")
        count, height, width = array.shape
        # Native byte order, C order, one buffer: what the library reads.
        array = np.ascontiguousarray(array.astype(native, copy=False))
        options = _options(seed, policy)
        result = ctypes.c_void_p()
        with self._guard._use() as guard:
            _check(
                lib.medguard_classify_pixels(
                    guard,
                    self._live(),
                    array.ctypes.data,
                    array.nbytes,
                    kind,
                    count,
                    height,
                    width,
                    options,
                    ctypes.byref(result),
                )
            )
        return _results(result.value)

    def classify_file(
        self,
        file: PathLike | bytes | bytearray | memoryview,
        *,
        seed: int | None = None,
        policy: str = "enforce",
    ) -> list[Result]:
        """Screens and classifies a file (a path) or its content (bytes):
        PNG, ``.npy`` or DICOM, told apart by content, DICOM decoded in the
        sandbox, as ``medguard predict`` does. One result per image it holds."""
        if isinstance(file, (bytes, bytearray, memoryview)):
            data = bytes(file)
        else:
            data = _read_capped(file)
        options = _options(seed, policy)
        result = ctypes.c_void_p()
        with self._guard._use() as guard:
            _check(
                lib.medguard_classify_file(
                    guard, self._live(), data, len(data), options, ctypes.byref(result)
                )
            )
        return _results(result.value)

    def _live(self) -> int:
        if self._handle is None:
            raise InvalidArgument("this model belongs to another process")
        return self._handle

    def _orphan(self) -> None:
        self._handle = None  # the parent's: never used nor freed here

    def __del__(self) -> None:
        if getattr(self, "_handle", None) is not None and lib is not None:
            lib.medguard_model_free(self._handle)
            self._handle = None


def _read_capped(path: PathLike) -> bytes:
    """A regular file's bytes, up to one past the library's input cap (so
    that it refuses a larger one in its own words); never blocks on a FIFO."""
    fd = os.open(_path(path), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InputRefused(f"{os.fsdecode(path)} is not a regular file")
        chunks, left = [], _native.INPUT_MAX_BYTES + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _options(seed: int | None, policy: str) -> _native.Options:
    policies = {"enforce": _native.POLICY_ENFORCE, "flag-only": _native.POLICY_FLAG_ONLY}
    if policy not in policies:
        raise ValueError(f"policy must be 'enforce' or 'flag-only', not {policy!r}")
    if seed is not None and not 0 <= seed < 2**64:
        raise ValueError(f"seed must fit in 64 unsigned bits, not {seed}")
    return _native.Options(seed is not None, seed or 0, policies[policy])


def _results(handle: int | None) -> list[Result]:
    try:
        return [
            Result._from_json(
                lib.medguard_image_json(lib.medguard_result_image(handle, i)).decode()
            )
            for i in range(lib.medguard_result_count(handle))
        ]
    finally:
        lib.medguard_result_free(handle)
