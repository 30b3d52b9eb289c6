//! Fixtures shared by medguard's test suite and benchmarks: the bundled model,
//! its golden outputs, a shared compiled guest, and hostile guest components
//! built from WAT against the real WIT world.

pub mod orthanc;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use medguard::input::{Batch, decode};
use medguard::model_dir;
use medguard::sandbox::{CompiledCache, GuestProgram, Limits, Runtime};
use medguard_attest::AttestedModel;
use serde::Deserialize;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the root")
        .to_owned()
}

/// The bundled demo model directory, re-signed with the (public) demo key to
/// expire over a year from today, so that no test depends on the committed
/// manifest's own expiry date. One copy per content and year, kept in
/// `target/renewed-models`.
pub fn model_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let pem = std::fs::read_to_string(repo_root().join("models/trust/demo.key.pem"))
            .expect("the demo key");
        let key = medguard_attest::SigningKey::from_pem(&pem).expect("the demo key parses");
        let parent = repo_root().join("target").join("renewed-models");
        let copy = medguard::signing::renewed_copy(
            &repo_root().join("models").join("pneumonia"),
            &parent,
            &key,
            medguard::signing::renewal_expiry(jiff::Timestamp::now()),
        )
        .expect("renewing the bundled model");
        // For scripts/test.sh, which runs the example on the same copy.
        std::fs::write(parent.join("current"), copy.as_os_str().as_encoded_bytes())
            .expect("recording the renewed copy");
        copy
    })
    .clone()
}

/// The bundled model, attested.
pub fn bundled_model() -> AttestedModel {
    model_dir::load_unsigned(&model_dir()).expect("the bundled model attests")
}

/// `models/pneumonia/golden.json`: sample files with PyTorch's probabilities.
#[derive(Debug, Deserialize)]
pub struct Golden {
    /// The samples.
    pub samples: Vec<GoldenSample>,
}

/// One golden sample.
#[derive(Debug, Deserialize)]
pub struct GoldenSample {
    /// Path relative to the model directory.
    pub file: String,
    /// The dataset's label.
    pub label: String,
    /// PyTorch's probability per label.
    pub probabilities: std::collections::BTreeMap<String, f64>,
}

/// Reads the golden file.
pub fn golden() -> Golden {
    let bytes = std::fs::read(model_dir().join("golden.json")).expect("golden.json");
    serde_json::from_slice(&bytes).expect("golden.json parses")
}

/// The guest core's spec for `model`, for running it natively next to the sandbox.
pub fn native_spec(model: &AttestedModel) -> medguard_guest_core::ModelSpec {
    let m = model.manifest();
    medguard_guest_core::ModelSpec {
        input_name: m.input.tensor.clone(),
        output_name: m.output.tensor.clone(),
        channels: m.input.shape.channels,
        height: m.input.shape.height,
        width: m.input.shape.width,
        min_value: m.input.range.min,
        max_value: m.input.range.max,
        classes: m.output.labels.len() as u32,
        max_batch: m.max_batch,
    }
}

/// Every file under `dir` by `/`-separated relative path: a model
/// directory as a browser fetches it (`medguard_attest::admit_files`).
pub fn files_in_memory(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut std::collections::BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).expect("read the directory") {
            let path = e.expect("a directory entry").path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let name = path.strip_prefix(root).expect("under the root");
                let name = name.to_str().expect("UTF-8 names").replace('\\', "/");
                out.insert(name, std::fs::read(&path).expect("read a file"));
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Decodes a file for the bundled model.
pub fn load_input(model: &AttestedModel, path: &Path) -> Batch {
    let bytes = std::fs::read(path).expect("read input");
    decode(&bytes, &model.manifest().input, model.manifest().max_batch).expect("decode input")
}

/// A compiled-guest cache shared by every test process of this build, so the
/// guest is compiled once per build rather than once per test.
pub fn shared_cache() -> CompiledCache {
    let dir = repo_root().join("target").join("test-guest-cache");
    CompiledCache::open(&dir).expect("open the shared test cache")
}

/// A program of its own (for a `Guard`, which owns one), compiled through
/// the shared cache.
pub fn shared_program_owned() -> GuestProgram {
    let runtime = Runtime::new(Limits::default()).expect("runtime");
    let guest = medguard::guest::bundled().expect("bundled guest is pinned");
    runtime
        .load_guest(&guest, Some(&shared_cache()))
        .expect("load the guest")
        .0
}

/// One runtime and the bundled guest, shared by the tests of one process.
pub fn shared_program() -> &'static GuestProgram {
    static PROGRAM: OnceLock<GuestProgram> = OnceLock::new();
    PROGRAM.get_or_init(|| {
        let runtime = Runtime::new(Limits::default()).expect("runtime");
        let guest = medguard::guest::bundled().expect("bundled guest is pinned");
        runtime
            .load_guest(&guest, Some(&shared_cache()))
            .expect("load the guest")
            .0
    })
}

/// A component that implements the classifier world with hand-written WAT
/// bodies for `load` and `classify` (the canonical-ABI core signatures);
/// `screen` traps.
/// `extra` adds helper functions the bodies may call.
pub fn hostile_component(load_body: &str, classify_body: &str, extra: &str) -> Vec<u8> {
    classifier_component(
        load_body,
        classify_body,
        "unreachable",
        "unreachable",
        "",
        extra,
        false,
    )
}

/// A component whose `load` succeeds and whose `screen` answers whatever
/// `screen_body` returns (a pointer to the canonical-ABI return area,
/// which `extra`'s data segments may lay out).
pub fn hostile_screening_component(screen_body: &str, extra: &str) -> Vec<u8> {
    classifier_component(
        "(i32.const 0)",
        "unreachable",
        screen_body,
        "unreachable",
        "",
        extra,
        false,
    )
}

/// A component whose `load` succeeds and whose `smooth` answers whatever
/// `smooth_body` returns (a pointer to the canonical-ABI return area of
/// `result<list<list<u32>>, guest-error>`).
pub fn hostile_smoothing_component(smooth_body: &str, extra: &str) -> Vec<u8> {
    classifier_component(
        "(i32.const 0)",
        "unreachable",
        "unreachable",
        smooth_body,
        "",
        extra,
        false,
    )
}

/// The same component plus one import the sandbox does not grant: a
/// function `log: func(msg: string)` of its world. Everything else about it
/// fits the sandbox, so refusing it can only be about the import.
pub fn component_importing_log() -> Vec<u8> {
    classifier_component(
        "unreachable",
        "unreachable",
        "unreachable",
        "unreachable",
        r#"(import "$root" "log" (func (param i32 i32)))"#,
        "",
        true,
    )
}

fn classifier_component(
    load_body: &str,
    classify_body: &str,
    screen_body: &str,
    smooth_body: &str,
    imports: &str,
    extra: &str,
    with_log_import: bool,
) -> Vec<u8> {
    let wat = format!(
        r#"(module
  {imports}
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 1024))
  ;; A bump allocator: enough for the host to copy arguments in.
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $ptr i32) (local $end i32)
    (local.set $ptr (global.get $heap))
    (local.set $end (i32.add (local.get $ptr) (local.get 3)))
    (global.set $heap (i32.and (i32.add (local.get $end) (i32.const 15)) (i32.const -16)))
    (block $fits
      (br_if $fits (i32.le_u (global.get $heap) (i32.mul (memory.size) (i32.const 65536))))
      (br_if $fits (i32.ne (memory.grow
        (i32.add (i32.shr_u (i32.sub (global.get $heap) (i32.mul (memory.size) (i32.const 65536))) (i32.const 16)) (i32.const 1)))
        (i32.const -1)))
      unreachable)
    (local.get $ptr))
  (func (export "medguard:guest/classifier@0.1.0#load")
    ;; model, spec and detector flatten to more than 16 values, so the
    ;; canonical ABI passes them through one pointer.
    (param i32) (result i32)
    {load_body})
  (func (export "medguard:guest/classifier@0.1.0#classify")
    (param i32 i32 i32 i32) (result i32)
    {classify_body})
  (func (export "medguard:guest/classifier@0.1.0#screen")
    ;; shape, data: lists; options: u64, u8, bool
    (param i32 i32 i32 i32 i64 i32 i32) (result i32)
    {screen_body})
  (func (export "medguard:guest/classifier@0.1.0#smooth")
    ;; shape, data: lists; options: f32, u32, u64, u64
    (param i32 i32 i32 i32 f32 i32 i64 i64) (result i32)
    {smooth_body})
  (func (export "medguard:guest/classifier@0.1.0#bound")
    ;; shape, data, radii: lists
    (param i32 i32 i32 i32 i32 i32) (result i32)
    unreachable)
  (func (export "medguard:guest/dicom@0.1.0#decode")
    ;; file (2) and profile (4 lists, 3 enums, 2 u32: 13) flatten to 15
    ;; values, under the canonical ABI's 16: passed flat.
    (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)
    unreachable)
  {extra}
)"#
    );
    let mut module = wat::parse_str(&wat).expect("hostile WAT parses");
    let mut resolve = wit_parser::Resolve::default();
    let (pkg, _) = resolve
        .push_path(repo_root().join("guest").join("wit"))
        .expect("WIT parses");
    let world = if with_log_import {
        let extra = resolve
            .push_str(
                "log.wit",
                "package test:log;\nworld plus-log {\n  import log: func(msg: string);\n  include medguard:guest/sandboxed-classifier@0.1.0;\n}\n",
            )
            .expect("extra WIT parses");
        resolve
            .select_world(&[extra], Some("plus-log"))
            .expect("world exists")
    } else {
        resolve
            .select_world(&[pkg], Some("sandboxed-classifier"))
            .expect("world exists")
    };
    wit_component::embed_component_metadata(
        &mut module,
        &resolve,
        world,
        wit_component::StringEncoding::UTF8,
        false, // the legacy export names the WAT above uses
    )
    .expect("embed WIT metadata");
    wit_component::ComponentEncoder::default()
        .module(&module)
        .and_then(|e| e.validate(true).encode())
        .expect("hostile component encodes")
}

/// The bundled demo trust policy (`models/trust/demo-policy.toml`), named
/// `demo`, as the guard takes it.
pub fn demo_policy() -> medguard::guard::NamedPolicy {
    let path = repo_root().join("models/trust/demo-policy.toml");
    let (policy, sha256) = medguard::admission::load_policy(&path).expect("demo policy");
    medguard::guard::NamedPolicy {
        policy,
        sha256,
        name: "demo".into(),
    }
}

/// The golden probability of "pneumonia" for `sample` is what `probabilities`
/// (one image's, in the manifest's label order) says, within 1e-4.
pub fn assert_golden_pneumonia(
    model: &AttestedModel,
    probabilities: &[f32],
    sample: &GoldenSample,
) {
    let index = model
        .manifest()
        .output
        .labels
        .iter()
        .position(|l| l == "pneumonia")
        .expect("the bundled model has a pneumonia label");
    let want = sample.probabilities["pneumonia"];
    assert!(
        (f64::from(probabilities[index]) - want).abs() < 1e-4,
        "{} against the golden {want}",
        probabilities[index]
    );
}

/// Asserts that two JSON answers are the same: equal strings, booleans,
/// keys, shapes and integers, and floating-point numbers within
/// `rel * (1 + |expected|)` of each other. For answers computed by tract's native kernels on one side and
/// its wasm kernels on the other, which agree to rounding, not to the bit.
pub fn assert_json_close(
    actual: &serde_json::Value,
    expected: &serde_json::Value,
    rel: f64,
    what: &str,
) {
    use serde_json::Value;
    match (actual, expected) {
        // Counts, seeds and pixels: exactly. (A float that is a whole
        // number may arrive written as an integer, from a browser.)
        (Value::Number(a), Value::Number(e)) if !a.is_f64() && !e.is_f64() => {
            assert_eq!(a, e, "{what}")
        }
        (Value::Number(a), Value::Number(e)) => {
            let (a, e) = (
                a.as_f64().unwrap_or(f64::NAN),
                e.as_f64().unwrap_or(f64::NAN),
            );
            assert!(
                (a - e).abs() <= rel * (1.0 + e.abs()),
                "{what}: {a}, expected {e}"
            );
        }
        (Value::Object(a), Value::Object(e)) => {
            assert_eq!(
                a.keys().collect::<Vec<_>>(),
                e.keys().collect::<Vec<_>>(),
                "{what}"
            );
            for (k, v) in a {
                assert_json_close(v, &e[k], rel, &format!("{what}.{k}"));
            }
        }
        (Value::Array(a), Value::Array(e)) => {
            assert_eq!(a.len(), e.len(), "{what}: lengths");
            for (i, (a, e)) in a.iter().zip(e).enumerate() {
                assert_json_close(a, e, rel, &format!("{what}[{i}]"));
            }
        }
        _ => assert_eq!(actual, expected, "{what}"),
    }
}

/// The relaxed-SIMD instructions of a wasm module (core module or
/// component): how many fused multiply-adds each function that has any
/// holds, in order, and the names of the first other relaxed instructions.
#[derive(Debug, Default)]
pub struct RelaxedSimd {
    /// `f32x4.relaxed_madd` count of each function that has any.
    pub madds_per_function: Vec<usize>,
    /// Any other relaxed instruction, by name (the first ten).
    pub others: Vec<String>,
}

/// Reads every instruction of `wasm` (`.cargo/config.toml` says why the
/// guest core wants relaxed SIMD in its kernel's multiply-adds alone).
pub fn relaxed_simd(wasm: &[u8]) -> RelaxedSimd {
    use wasmparser::{Operator, Parser, Payload};
    let mut found = RelaxedSimd::default();
    for payload in Parser::new(0).parse_all(wasm) {
        let Payload::CodeSectionEntry(body) = payload.expect("the module parses") else {
            continue;
        };
        let mut reader = body.get_operators_reader().expect("a function body");
        let mut here = 0;
        while !reader.eof() {
            let op = reader.read().expect("an instruction");
            let name = format!("{op:?}");
            if matches!(op, Operator::F32x4RelaxedMadd) {
                here += 1;
            } else if name.contains("Relaxed") && found.others.len() < 10 {
                found.others.push(name);
            }
        }
        if here > 0 {
            found.madds_per_function.push(here);
        }
    }
    found
}
