//! What the C layer costs per image over the Rust library call it wraps:
//! the same 28x28 image, the same guard and model, classified through
//! `Guard::classify_batch` and through `medguard_classify_pixels` (reading
//! the result's JSON and freeing it, as a C caller does), interleaved, 200
//! times each after a warm-up. Prints medians and their ratio, and writes
//! them as JSON (name, value, unit) to target/bench/embed.json.
//!
//! cargo bench -p medguard-embed --bench overhead
//! (scripts/bench-embed.sh also runs the Python side in the same go.)

#![allow(clippy::unwrap_used)] // A benchmark fails loudly.

use std::ffi::CString;
use std::time::{Duration, Instant};

use medguard::guard::{ClassifyOptions, Guard, ScreeningPolicy};
use medguard::guest::SandboxSettings;
use medguard::input::{SampleType, from_samples};
use medguard_embed::*;
use medguard_tests::{demo_policy, model_dir, repo_root};

const ROUNDS: usize = 200;

fn median(mut times: Vec<Duration>) -> f64 {
    times.sort();
    times[times.len() / 2].as_secs_f64() * 1e3
}

fn main() {
    let tmp = tempfile::tempdir().unwrap();
    let pixels: Vec<u8> = {
        let npz = std::fs::read(repo_root().join("tests/adversarial/ci/clean.npz")).unwrap();
        let batch = medguard::input::read_npz_images(&npz, "test_images").unwrap();
        batch.data[..784]
            .iter()
            .map(|v| (v * 255.0).round() as u8)
            .collect()
    };
    let seed = 7;

    // The library, as a Rust caller uses it.
    let guard = Guard::open(&tmp.path().join("rust"), demo_policy()).unwrap();
    let model = match guard.admit(&model_dir()).unwrap() {
        medguard::guard::Admission::Admitted { model, .. } => *model,
        medguard::guard::Admission::Refused { error, .. } => panic!("{error}"),
    };
    let program = SandboxSettings::with_default_cache()
        .start()
        .unwrap()
        .program;
    let guard = guard.with_sandbox(program);
    let options = ClassifyOptions {
        seed,
        policy: ScreeningPolicy::Enforce,
        allow_unscreened: false,
    };

    // The C ABI, as a C caller uses it.
    let c_data = CString::new(tmp.path().join("c").to_str().unwrap()).unwrap();
    let c_policy = CString::new(
        repo_root()
            .join("models/trust/demo-policy.toml")
            .to_str()
            .unwrap(),
    )
    .unwrap();
    let c_model_dir = CString::new(model_dir().to_str().unwrap()).unwrap();
    let mut c_guard = std::ptr::null_mut();
    let mut c_model = std::ptr::null_mut();
    let c_options = medguard_options {
        fixed_seed: 1,
        seed,
        policy: MEDGUARD_POLICY_ENFORCE,
    };
    // SAFETY: valid strings and out pointers; the handles are freed below.
    unsafe {
        assert_eq!(
            medguard_guard_open(c_data.as_ptr(), c_policy.as_ptr(), &mut c_guard),
            medguard_status::MEDGUARD_OK
        );
        assert_eq!(
            medguard_admit(c_guard, c_model_dir.as_ptr(), &mut c_model),
            medguard_status::MEDGUARD_OK
        );
    }

    let rust_call = || {
        let manifest = model.manifest();
        let batch = from_samples(
            &pixels,
            SampleType::U8,
            1,
            28,
            28,
            &manifest.input,
            manifest.max_batch,
        )
        .unwrap();
        let classified = guard.classify_batch(&model, &batch, options, None).unwrap();
        std::hint::black_box(classified);
    };
    let c_call = || {
        let mut result = std::ptr::null_mut();
        // SAFETY: live handles, a valid buffer; the result is freed here.
        unsafe {
            let status = medguard_classify_pixels(
                c_guard,
                c_model,
                pixels.as_ptr(),
                pixels.len(),
                MEDGUARD_SAMPLES_U8,
                1,
                28,
                28,
                &c_options,
                &mut result,
            );
            assert_eq!(status, medguard_status::MEDGUARD_OK);
            let image = medguard_result_image(result, 0);
            std::hint::black_box(std::ffi::CStr::from_ptr(medguard_image_json(image)));
            medguard_result_free(result);
        }
    };
    let interleaved = || {
        for _ in 0..10 {
            rust_call();
            c_call();
        }
        let (mut rust_times, mut c_times) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let t = Instant::now();
            rust_call();
            rust_times.push(t.elapsed());
            let t = Instant::now();
            c_call();
            c_times.push(t.elapsed());
        }
        (median(rust_times), median(c_times))
    };
    let (rust_ms, c_ms) = interleaved();
    // Both guards prepared: every sandbox starts from the model's snapshot.
    assert!(matches!(
        guard.prepare(&model).unwrap(),
        Ok(medguard::guard::Readiness::Prepared(_))
    ));
    // SAFETY: live handles.
    let status = unsafe { medguard_model_prepare(c_guard, c_model) };
    assert_eq!(status, medguard_status::MEDGUARD_OK);
    let (rust_prepared_ms, c_prepared_ms) = interleaved();
    println!(
        "per image, median of {ROUNDS} interleaved calls (each: fresh sandbox, screen, classify, ledger commit);"
    );
    println!("model loaded in each sandbox / sandbox started from the model's prepared snapshot");
    println!("  Rust library (Guard::classify_batch): {rust_ms:.3} ms / {rust_prepared_ms:.3} ms");
    println!(
        "  C ABI (medguard_classify_pixels + JSON + free): {c_ms:.3} ms / {c_prepared_ms:.3} ms"
    );
    println!(
        "  C/Rust: {:.3}x / {:.3}x",
        c_ms / rust_ms,
        c_prepared_ms / rust_prepared_ms
    );
    let figure = |name: &str, value: f64, unit: &str| serde_json::json!({"name": format!("embed.{name}"), "value": value, "unit": unit});
    let json = serde_json::json!([
        figure("rust_library_per_image", rust_ms, "ms"),
        figure("c_abi_per_image", c_ms, "ms"),
        figure("c_over_rust", c_ms / rust_ms, "ratio"),
        figure("rust_library_per_image_prepared", rust_prepared_ms, "ms"),
        figure("c_abi_per_image_prepared", c_prepared_ms, "ms"),
        figure(
            "c_over_rust_prepared",
            c_prepared_ms / rust_prepared_ms,
            "ratio"
        ),
    ]);
    let out = std::env::var_os("MEDGUARD_BENCH_JSON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/bench/embed.json"));
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    std::fs::write(&out, serde_json::to_string_pretty(&json).unwrap()).unwrap();

    // SAFETY: freed once, after the last use.
    unsafe {
        medguard_model_free(c_model);
        medguard_guard_free(c_guard);
    }
}
