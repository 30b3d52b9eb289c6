"""The Python package against the ``medguard`` CLI: the same answers, the
same one-line reasons, receipts the CLI verifies, and a guard shared by
threads. Run by embed/tests/abi/python.rs (``scripts/test.sh``), which sets
MEDGUARD_LIBRARY, MEDGUARD_BIN, MEDGUARD_TEST_MODEL and MEDGUARD_CACHE_DIR."""

from __future__ import annotations

import ctypes
import json
import os
import pickle
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import medguard

REPO = Path(__file__).resolve().parents[2]
MODEL = Path(os.environ["MEDGUARD_TEST_MODEL"])
POLICY = REPO / "models/trust/demo-policy.toml"
BIN = os.environ["MEDGUARD_BIN"]
SEED = 20261203


def images(name: str, count: int) -> np.ndarray:
    """The first `count` uint8 images of a committed set."""
    with np.load(REPO / name) as npz:
        key = "test_images" if "test_images" in npz else "images"
        return npz[key][:count]


def cli(args: list[str], data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, MEDGUARD_TRUST_POLICY=str(POLICY), MEDGUARD_DATA_DIR=str(data_dir))
    return subprocess.run([BIN, *args], env=env, capture_output=True, text=True)


def predict(files: list[Path], data_dir: Path, *extra: str) -> list[dict[str, Any]]:
    out = cli(["predict", "--json", "--seed", str(SEED), *extra, str(MODEL), *map(str, files)], data_dir)
    assert out.returncode in (0, 1), out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def comparable(answer: dict[str, Any]) -> dict[str, Any]:
    """All but the receipt (a time, each run's own ledger) and the input's name."""
    return {k: v for k, v in answer.items() if k not in ("receipt", "input")}


@pytest.fixture(scope="module")
def guard(tmp_path_factory: pytest.TempPathFactory) -> medguard.Guard:
    with medguard.Guard(tmp_path_factory.mktemp("data"), POLICY) as guard:
        yield guard


@pytest.fixture(scope="module")
def model(guard: medguard.Guard) -> medguard.Model:
    return guard.admit(MODEL)


def test_the_model_is_admitted_as_signed(model: medguard.Model) -> None:
    assert (model.name, model.input_size, len(model.sha256)) == ("pneumonia-cnn", (28, 28), 64)
    assert model.signer.startswith("medguard-demo (")
    assert "checkpoint" in model.receipt


def test_the_samples_give_the_clis_answers(model: medguard.Model, tmp_path: Path) -> None:
    samples = sorted((MODEL / "samples").glob("*.png"))
    mine = [model.classify_file(path, seed=SEED)[0] for path in samples]
    theirs = predict(samples, tmp_path)
    assert [comparable(r.raw) for r in mine] == [comparable(t) for t in theirs]
    assert all(r.label is not None and r.verdict is not medguard.Verdict.REJECT for r in mine)


def test_arrays_give_the_clis_answers(model: medguard.Model, tmp_path: Path) -> None:
    clean = images("tests/adversarial/ci/clean.npz", 4)
    files = []
    for i, image in enumerate(clean):
        files.append(tmp_path / f"clean-{i}.npy")
        np.save(files[-1], image)
    mine = [model.classify(image, seed=SEED) for image in clean]
    theirs = predict(files, tmp_path)
    assert [comparable(r.raw) for r in mine] == [comparable(t) for t in theirs]
    # A batch is the same images in one sandbox.
    assert [comparable(r.raw) for r in model.classify_batch(clean, seed=SEED)] == [
        comparable(r.raw) for r in mine
    ]


def test_a_rejected_input_gets_no_label(model: medguard.Model) -> None:
    attacked = images("tests/adversarial/ci/sets/pgd-8.npz", 1)[0]
    result = model.classify(attacked, seed=SEED)
    assert (result.verdict, result.label, result.probabilities) == (medguard.Verdict.REJECT, None, None)
    assert result.p_value is not None and 0.0 <= result.p_value <= 1.0
    shown = model.classify(attacked, seed=SEED, policy="flag-only")
    assert shown.verdict is medguard.Verdict.REJECT and shown.label in ("normal", "pneumonia")


def test_a_tampered_model_raises_the_clis_reason(guard: medguard.Guard, tmp_path: Path) -> None:
    tampered = tmp_path / "tampered"
    shutil.copytree(MODEL, tampered)
    onnx = tampered / "model.onnx"
    data = bytearray(onnx.read_bytes())
    data[-1] ^= 1
    onnx.write_bytes(bytes(data))
    with pytest.raises(medguard.ModelRefused) as refused:
        guard.admit(tampered)
    out = cli(["verify", str(tampered)], tmp_path / "cli")
    assert out.returncode == 1
    assert out.stderr.strip() == f"medguard: refused: {refused.value}"


def test_bad_inputs_raise_the_clis_reason_and_the_guard_goes_on(model: medguard.Model, tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(medguard.InputRefused) as refused:
        model.classify_file(junk)
    (theirs,) = predict([junk], tmp_path)
    assert theirs["error"] == str(refused.value)
    with pytest.raises(medguard.InputRefused, match="the model takes 28x28"):
        model.classify(np.zeros((27, 27), np.uint8))
    with pytest.raises(medguard.InputRefused):
        model.classify(np.full((28, 28), 2.0, np.float32))  # outside the manifest's range
    with pytest.raises(TypeError):
        model.classify(np.zeros((28, 28), np.int32))
    with pytest.raises(ValueError):
        model.classify(np.zeros((1, 28, 28), np.uint8))
    with pytest.raises(ValueError):
        model.classify(np.zeros((28, 28), np.uint8), policy="lenient")
    assert model.classify(images("tests/adversarial/ci/clean.npz", 1)[0]).label is not None


def test_receipts_verify_offline_with_the_ledger_key(
    guard: medguard.Guard, model: medguard.Model, tmp_path: Path
) -> None:
    result = model.classify(images("tests/adversarial/ci/clean.npz", 1)[0], seed=SEED)
    line, key = tmp_path / "result.json", tmp_path / "ledger.pub"
    line.write_text(json.dumps(result.raw))
    key.write_text(guard.ledger_key + "\n")
    ok = cli(["ledger", "verify-receipt", str(line), "--key", str(key)], tmp_path)
    assert ok.returncode == 0, ok.stderr
    forged = dict(result.raw, label="normal" if result.label == "pneumonia" else "pneumonia")
    line.write_text(json.dumps(forged))
    refused = cli(["ledger", "verify-receipt", str(line), "--key", str(key)], tmp_path)
    assert refused.returncode == 1


def test_a_prepared_model_gives_the_same_answers(tmp_path: Path) -> None:
    clean = images("tests/adversarial/ci/clean.npz", 3)
    with medguard.Guard(tmp_path / "data", POLICY) as guard:
        model = guard.admit(MODEL)
        loaded = [comparable(model.classify(i, seed=SEED).raw) for i in clean]
        assert model.prepare()
        prepared = [comparable(model.classify(i, seed=SEED).raw) for i in clean]
    assert prepared == loaded


def test_threads_share_one_guard(model: medguard.Model) -> None:
    clean = images("tests/adversarial/ci/clean.npz", 6)
    serial = [comparable(model.classify(i, seed=SEED).raw) for i in clean]
    with ThreadPoolExecutor(max_workers=3) as pool:
        parallel = list(pool.map(lambda i: comparable(model.classify(i, seed=SEED).raw), clean))
    assert parallel == serial


def test_a_closed_guards_model_cannot_classify(tmp_path: Path) -> None:
    guard = medguard.Guard(tmp_path / "data", POLICY)
    model = guard.admit(MODEL)
    guard.close()
    with pytest.raises(medguard.InvalidArgument, match="closed"):
        model.classify(np.zeros((28, 28), np.uint8))


def test_the_monai_style_example_runs(tmp_path: Path) -> None:
    clean = tmp_path / "clean.npy"
    attacked = tmp_path / "attacked.npy"
    np.save(clean, images("tests/adversarial/ci/clean.npz", 1)[0])
    np.save(attacked, images("tests/adversarial/ci/sets/pgd-8.npz", 1)[0])
    out = subprocess.run(
        [sys.executable, str(REPO / "python/examples/monai_pipeline.py"), str(tmp_path / "data"),
         str(POLICY), str(MODEL), str(clean), str(attacked)],
        capture_output=True, text=True,
    )
    assert out.returncode == 1, out.stderr  # one image was rejected
    first, second = (json.loads(line) for line in out.stdout.splitlines())
    assert first["label"] is not None and first["verdict"] != "reject"
    assert (second["verdict"], second["label"]) == ("reject", None)
    assert second["ledger_index"] > first["ledger_index"]


def test_layouts_and_dtypes_give_the_same_answer(model: medguard.Model) -> None:
    image = images("tests/adversarial/ci/clean.npz", 1)[0]
    want = comparable(model.classify(image, seed=SEED).raw)
    assert comparable(model.classify(np.asfortranarray(image), seed=SEED).raw) == want
    assert comparable(model.classify(np.fliplr(np.fliplr(image)), seed=SEED).raw) == want
    wide = image.astype(np.uint16) * 257  # the same gray levels at 16 bits
    big_endian = wide.astype(">u2")
    assert comparable(model.classify(big_endian, seed=SEED).raw) == comparable(
        model.classify(wide, seed=SEED).raw
    )
    values = (image / 255.0).astype(np.float32)
    assert comparable(model.classify(values.astype(np.float64), seed=SEED).raw) == comparable(
        model.classify(values, seed=SEED).raw
    )


def test_file_content_and_path_are_the_same_input(model: medguard.Model) -> None:
    sample = MODEL / "samples" / "normal-1.png"
    by_path = model.classify_file(sample, seed=SEED)[0]
    by_content = model.classify_file(bytearray(sample.read_bytes()), seed=SEED)[0]
    assert comparable(by_path.raw) == comparable(by_content.raw)


def test_a_nul_in_a_path_is_refused_not_cut(guard: medguard.Guard) -> None:
    with pytest.raises(ValueError, match="NUL"):
        guard.admit(str(MODEL) + "\0/elsewhere")


def test_guards_and_models_do_not_travel_between_processes(
    guard: medguard.Guard, model: medguard.Model
) -> None:
    for handle_owner in (guard, model):
        with pytest.raises(TypeError, match="belongs to the process"):
            pickle.dumps(handle_owner)
    image = images("tests/adversarial/ci/clean.npz", 1)[0]
    raw_guard, raw_model = guard._handle, model._handle
    pid = os.fork()
    if pid == 0:  # the child: refused by the package, then by the library itself
        code = 1
        try:
            model.classify(image)
        except medguard.InvalidArgument:
            result = ctypes.c_void_p()
            status = medguard._native.lib.medguard_classify_pixels(
                raw_guard, raw_model, image.ctypes.data, image.nbytes,
                medguard._native.SAMPLES_U8, 1, 28, 28, None, ctypes.byref(result),
            )
            message = medguard._native.lib.medguard_last_error() or b""
            if status == medguard._native.INVALID_ARGUMENT and b"another process" in message:
                code = 0
        except BaseException:
            pass
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # The parent's guard is untouched.
    assert model.classify(image).verdict is not None


def test_close_is_idempotent(tmp_path: Path) -> None:
    guard = medguard.Guard(tmp_path / "data", POLICY)
    guard.close()
    guard.close()
    with pytest.raises(medguard.InvalidArgument, match="closed"):
        guard.admit(MODEL)


def test_close_during_calls_on_other_threads_is_safe(tmp_path: Path) -> None:
    clean = images("tests/adversarial/ci/clean.npz", 4)
    guard = medguard.Guard(tmp_path / "data", POLICY)
    model = guard.admit(MODEL)
    outcomes: list[str] = []

    def work() -> None:
        for image in clean:
            try:
                model.classify(image)
                outcomes.append("classified")
            except medguard.InvalidArgument:
                outcomes.append("closed")

    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(work) for _ in range(2)]
        while not outcomes:  # close while the workers are busy
            pass
        guard.close()
        for future in futures:
            future.result()
    assert "classified" in outcomes and len(outcomes) == 8
    with pytest.raises(medguard.InvalidArgument, match="closed"):
        model.classify(clean[0])


def test_odd_paths_and_files_are_refused(guard: medguard.Guard, model: medguard.Model, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="empty path"):
        guard.admit("")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(medguard.InputRefused, match="not a regular file"):
        model.classify_file(fifo)  # would block forever if opened blocking
