//! What a certified prediction costs (issue 15): randomized smoothing of one
//! image with the certifiable model's manifest parameters (its `samples`
//! noised copies in one guest call), against one bare inference of the same
//! model in the same sandbox, and against the same smoothing in native tract;
//! and interval bounds of one image with the interval-certified model (its
//! 33 radii in one guest call) against one bare inference of that model.
//! Interleaved rounds, so that machine noise hits every side; the figures are
//! ratios and medians of one run.
//!
//! Every figure is also written as JSON (`[{"name", "value", "unit"}]`) to
//! `$MEDGUARD_BENCH_JSON`, default `target/bench/certify.json`.
//!
//! Run: `cargo bench -p medguard-tests --bench certify`

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use medguard::sandbox::{Limits, Runtime};
use medguard_guest_core::{Classifier, InputBatch, SmoothOptions};
use medguard_tests::{golden, load_input, model_dir, native_spec, repo_root, shared_cache};

const ROUNDS: usize = 15;

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1000.0
}

fn main() {
    let model = medguard::model_dir::load_unsigned(&repo_root().join("models/pneumonia-smoothed"))
        .expect("the certifiable model attests");
    let table = model
        .radius_table()
        .expect("its manifest asks for certification");
    let smoothing = *table.smoothing();
    let runtime = Runtime::new(Limits::default()).expect("runtime");
    let guest = medguard::guest::bundled().expect("pinned guest");
    let (program, _) = runtime
        .load_guest(&guest, Some(&shared_cache()))
        .expect("guest");
    program.prepare(&model).expect("snapshot");
    let images: Vec<_> = golden()
        .samples
        .iter()
        .map(|s| load_input(&model, &model_dir().join(&s.file)))
        .collect();

    // Native tract on a thread of its own (see the latency bench: its AVX
    // kernels would slow wasm code on the same thread).
    let (to_native, native_in) = mpsc::channel::<InputBatch>();
    let (native_out, from_native) = mpsc::channel::<Duration>();
    let bytes = model.model_bytes().to_vec();
    let spec = native_spec(&model);
    let options = SmoothOptions {
        sigma: smoothing.noise_sigma(),
        samples: smoothing.samples,
        seed: 1,
        first_stream: 0,
    };
    thread::spawn(move || {
        let native = Classifier::load(&bytes, spec).expect("native tract loads the model");
        for batch in native_in {
            let t = Instant::now();
            native.smooth(&batch, options).expect("native smooths");
            if native_out.send(t.elapsed()).is_err() {
                break;
            }
        }
    });

    let mut native = Vec::new();
    let (certify, bare) = guest_costs(&program, &model, &images, |image| {
        to_native
            .send(InputBatch {
                shape: image.shape.to_vec(),
                data: image.data.clone(),
            })
            .expect("native thread alive");
        native.push(from_native.recv().expect("native answers"));
    });
    let native = median(native);
    println!(
        "certified prediction, {} samples at sigma {}: guest {certify:.1} ms per image \
         ({:.0}x one bare inference of {bare:.2} ms); native tract {native:.1} ms: \
         guest/native {:.2}x (medians of {ROUNDS} interleaved rounds)",
        smoothing.samples,
        smoothing.sigma,
        certify / bare,
        certify / native
    );
    let (intervals, intervals_bare) = interval_costs(&program, &images);
    println!(
        "interval certificate, 33 radii: guest {intervals:.2} ms per image ({:.1}x one bare \
         inference of {intervals_bare:.2} ms; medians of {ROUNDS} interleaved rounds)",
        intervals / intervals_bare
    );
    let figures = serde_json::json!([
        {"name": "certified prediction per image, guest", "value": certify, "unit": "ms"},
        {"name": "bare inference per image, guest", "value": bare, "unit": "ms"},
        {"name": "certified prediction per image, native tract", "value": native, "unit": "ms"},
        {"name": "certified / bare inference, guest", "value": certify / bare, "unit": "ratio"},
        {"name": "certified prediction, guest / native", "value": certify / native, "unit": "ratio"},
        {"name": "smoothing samples", "value": smoothing.samples, "unit": "count"},
        {"name": "interval certificate per image, guest", "value": intervals, "unit": "ms"},
        {"name": "bare inference per image, interval-certified model, guest", "value": intervals_bare, "unit": "ms"},
        {"name": "interval certificate / bare inference, guest", "value": intervals / intervals_bare, "unit": "ratio"},
    ]);
    let path = std::env::var_os("MEDGUARD_BENCH_JSON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/bench/certify.json"));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("create the figures directory");
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&figures).expect("JSON")).expect("write");
    println!("figures written to {}", path.display());
}

/// Medians of an interval certificate and of a bare inference of the
/// interval-certified model, interleaved, on the same images.
fn interval_costs(
    program: &medguard::sandbox::GuestProgram,
    images: &[medguard::input::Batch],
) -> (f64, f64) {
    let model = medguard::model_dir::load_unsigned(&repo_root().join("models/pneumonia-ibp"))
        .expect("the interval-certified model attests");
    assert!(
        matches!(
            model.certifier(),
            Some(medguard_certify::Certifier::IntervalBounds(_))
        ),
        "its manifest asks for interval bounds"
    );
    program.prepare(&model).expect("snapshot");
    guest_costs(program, &model, images, |_| {})
}

/// Medians of a certificate (by the model's own method, round `r`'s noise
/// seeded with `r`) and of a bare inference, in one fresh sandbox per
/// round, on the images in turn; `beside` runs after each round with its
/// image, so that what it times is interleaved with the guest.
fn guest_costs(
    program: &medguard::sandbox::GuestProgram,
    model: &medguard_attest::AttestedModel,
    images: &[medguard::input::Batch],
    mut beside: impl FnMut(&medguard::input::Batch),
) -> (f64, f64) {
    let certifier = model
        .certifier()
        .expect("its manifest asks for certification");
    let (mut certify, mut bare) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let image = &images[round % images.len()];
        let mut session = program.session(model).expect("session");
        let t = Instant::now();
        session
            .certify(&image.shape, &image.data, certifier, round as u64)
            .expect("certify");
        certify.push(t.elapsed());
        let t = Instant::now();
        session
            .classify(&image.shape, &image.data)
            .expect("classify");
        bare.push(t.elapsed());
        beside(image);
    }
    (median(certify), median(bare))
}
