//! The wasm module itself, in headless Chromium (wasm-bindgen-test, in a
//! dedicated worker as the page runs it): admission from memory, screening,
//! refusals, and the JavaScript surface's own checks.
//!
//! `scripts/test.sh` runs it with `wasm-bindgen-test-runner` and the system
//! chromedriver: `cargo test -p medguard-web --target wasm32-unknown-unknown`.

#![cfg(target_arch = "wasm32")]
#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

use std::collections::BTreeMap;

use medguard_web::guard::{Model, Policy};
use wasm_bindgen::JsValue;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_dedicated_worker);

macro_rules! model_files {
    ($($name:literal),* $(,)?) => {
        [$(($name, include_bytes!(concat!("../../models/pneumonia/", $name)).as_slice())),*]
    };
}

/// The bundled model directory, as the page fetches it.
fn files() -> BTreeMap<String, Vec<u8>> {
    model_files![
        "README.md",
        "adversarial/pgd8-1.png",
        "adversarial/pgd8-2.png",
        "golden.json",
        "manifest.json",
        "metrics.json",
        "model.onnx",
        "model.sig",
        "requirements.txt",
        "samples/normal-1.png",
        "samples/normal-2.png",
        "samples/normal-3.png",
        "samples/pneumonia-1.png",
        "samples/pneumonia-2.png",
        "samples/pneumonia-3.png",
        "splits.json",
        "train.py",
        "write_manifest.py",
    ]
    .into_iter()
    .map(|(name, bytes)| (name.to_owned(), bytes.to_vec()))
    .collect()
}

const POLICY: &str = include_str!("../../models/trust/demo-policy.toml");
const KEY: &str = include_str!("../../models/trust/demo.pub.pem");

fn policy() -> Policy {
    Policy::parse(POLICY, |_| Ok(KEY.to_owned())).unwrap()
}

#[wasm_bindgen_test]
fn admits_screens_and_classifies_in_the_browser() {
    let model = Model::admit(&policy(), &files(), jiff::Timestamp::now()).unwrap();
    assert_eq!(model.attestation().name, "pneumonia-cnn");
    let files = files();
    for (name, label) in [
        ("samples/normal-1.png", Some("normal")),
        ("samples/pneumonia-1.png", Some("pneumonia")),
        ("adversarial/pgd8-1.png", None),
    ] {
        let p = model.classify(Some(name), &files[name], 42, "").unwrap();
        assert_eq!(p[0].label.as_deref(), label, "{name}");
        let verdict = p[0].verdict.as_str();
        assert_eq!(verdict == "reject", label.is_none(), "{name}: {verdict}");
    }
}

#[wasm_bindgen_test]
fn a_flipped_bit_is_refused_in_the_browser() {
    let mut files = files();
    files.get_mut("model.onnx").unwrap()[100] ^= 0x80;
    let e = Model::admit(&policy(), &files, jiff::Timestamp::now()).unwrap_err();
    assert!(e.to_string().contains("model.onnx"), "{e}");
}

#[wasm_bindgen_test]
fn the_javascript_surface_admits_from_a_map_and_refuses_bad_arguments() {
    let keys = js_sys::Map::new();
    keys.set(&"demo.pub.pem".into(), &KEY.into());
    let policy = medguard_web::Policy::new(POLICY, Some(keys)).unwrap();
    let map = js_sys::Map::new();
    for (name, bytes) in files() {
        map.set(
            &name.into(),
            &js_sys::Uint8Array::from(bytes.as_slice()).into(),
        );
    }
    let model = medguard_web::Model::admit(&policy, map.clone()).unwrap();
    let png = &files()["samples/normal-2.png"];
    let answer = model.classify(Some("n2.png".into()), png, 7).unwrap();
    let first = js_sys::Reflect::get(&answer, &0.into()).unwrap();
    let seed = js_sys::Reflect::get(&first, &"seed".into()).unwrap();
    assert_eq!(seed.as_f64(), Some(7.0));
    // A seed a JavaScript number cannot carry back exactly is refused.
    assert!(model.classify(None, png, 1 << 60).is_err());
    // Contents must be bytes.
    map.set(&"README.md".into(), &JsValue::from_str("text"));
    assert!(medguard_web::Model::admit(&policy, map).is_err());
}
