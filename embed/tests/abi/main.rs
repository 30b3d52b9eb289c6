//! The C ABI from outside Rust, as its users call it: the committed header
//! against the code (`header`), the C example and a contract test compiled
//! with the system C compiler and run under AddressSanitizer (`c`), and the
//! Python package's pytest suite (`python`). The C and Python answers are
//! compared with `medguard predict --json` on the same files.

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

mod c;
mod header;
mod python;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use medguard_tests::{model_dir, repo_root};
use serde_json::Value;

/// The directory cargo builds this profile into: the library and the
/// `medguard` binary sit side by side there (`cargo test --workspace`
/// builds both before any test runs).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/abi-HASH
    exe.parent().unwrap().parent().unwrap().to_owned()
}

/// `libmedguard_embed.so`, as a C program links it and Python loads it:
/// the copy in `deps/`, which the same compilation as the rlib this test
/// links produced (cargo copies it up a directory only for `cargo build`).
fn library() -> PathBuf {
    let lib = profile_dir().join("deps/libmedguard_embed.so");
    assert!(
        lib.exists(),
        "{} is missing: cargo builds it with this crate",
        lib.display()
    );
    lib
}

/// The `medguard` binary of the same build. It is another package's, so
/// cargo does not promise it here: `cargo test --workspace` builds it; a
/// stale one is caught by the guest digest every answer carries.
fn medguard_bin() -> PathBuf {
    let bin = profile_dir().join("medguard");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p medguard` with this profile, or test the workspace",
        bin.display()
    );
    bin
}

fn demo_policy() -> PathBuf {
    repo_root().join("models/trust/demo-policy.toml")
}

/// `medguard predict --json --seed SEED` on `files` with a fresh data
/// directory: (input, answer) per line, and the exit code.
fn predict(files: &[PathBuf], seed: u64, extra: &[&str]) -> (Vec<(String, Value)>, Output) {
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(medguard_bin())
        .args(["predict", "--json", "--seed", &seed.to_string()])
        .args(extra)
        .arg(model_dir())
        .args(files)
        .env("MEDGUARD_CACHE_DIR", guest_cache())
        .env("MEDGUARD_TRUST_POLICY", demo_policy())
        .env("MEDGUARD_DATA_DIR", data.path())
        .output()
        .unwrap();
    let lines = String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|line| {
            let mut v: Value = serde_json::from_str(line).unwrap();
            let input = v["input"].as_str().unwrap().to_owned();
            v.as_object_mut().unwrap().remove("input");
            (input, v)
        })
        .collect();
    (lines, out)
}

/// The compiled-guest cache the whole suite shares.
fn guest_cache() -> PathBuf {
    repo_root().join("target/test-guest-cache")
}

/// The fields of an answer that must agree between front ends: all but
/// the receipt (a time, and each run's own ledger).
fn comparable(answer: &Value) -> Value {
    let mut v = answer.clone();
    let object = v.as_object_mut().unwrap();
    object.remove("receipt");
    object.remove("input");
    v
}

/// The bundled samples, PGD-8 attacked copies of two clean test images as
/// `.npy` and as 8-bit PGM frame buffers, and the samples as PGM, in `dir`.
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let samples = model_dir().join("samples");
    let mut files: Vec<PathBuf> = ["normal-1", "normal-2", "pneumonia-1", "pneumonia-3"]
        .iter()
        .map(|s| samples.join(format!("{s}.png")))
        .collect();
    for png_path in files.clone() {
        let (w, h, pixels) = png_gray(&png_path);
        let pgm = dir.join(png_path.with_extension("pgm").file_name().unwrap());
        write_pgm(&pgm, w, h, &pixels);
        files.push(pgm);
    }
    let npz = std::fs::read(repo_root().join("tests/adversarial/ci/sets/pgd-8.npz")).unwrap();
    let batch = medguard::input::read_npz_images(&npz, "images").unwrap();
    for i in 0..2 {
        let pixels: Vec<u8> = batch.data[i * 784..(i + 1) * 784]
            .iter()
            .map(|v| (v * 255.0).round() as u8)
            .collect();
        let npy = dir.join(format!("pgd8-{i}.npy"));
        use ndarray_npy::WriteNpyExt;
        ndarray::Array2::from_shape_vec((28, 28), pixels.clone())
            .unwrap()
            .write_npy(std::fs::File::create(&npy).unwrap())
            .unwrap();
        files.push(npy);
        let pgm = dir.join(format!("pgd8-{i}.pgm"));
        write_pgm(&pgm, 28, 28, &pixels);
        files.push(pgm);
    }
    files
}

/// An 8-bit gray PNG's size and samples.
fn png_gray(path: &Path) -> (u32, u32, Vec<u8>) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let frame = reader.next_frame(&mut buf).unwrap();
    assert_eq!(
        (frame.color_type, frame.bit_depth),
        (png::ColorType::Grayscale, png::BitDepth::Eight),
        "{}",
        path.display()
    );
    buf.truncate(frame.buffer_size());
    (frame.width, frame.height, buf)
}

fn write_pgm(path: &Path, width: u32, height: u32, pixels: &[u8]) {
    let mut bytes = format!("P5\n{width} {height}\n255\n").into_bytes();
    bytes.extend_from_slice(pixels);
    std::fs::write(path, bytes).unwrap();
}

/// A copy of the renewed model directory with one byte of the model flipped.
fn tampered_model(dir: &Path) -> PathBuf {
    fn copy_tree(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            match entry.file_type().unwrap().is_dir() {
                true => copy_tree(&entry.path(), &target),
                false => drop(std::fs::copy(entry.path(), target).unwrap()),
            }
        }
    }
    let copy = dir.join("tampered");
    copy_tree(&model_dir(), &copy);
    let onnx = copy.join("model.onnx");
    let mut bytes = std::fs::read(&onnx).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&onnx, bytes).unwrap();
    copy
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
