//! Measures what the README reports, in one run on one machine:
//! guest size, guest compile time (cold and from the verified cache), model
//! load time inside the guest, and per-inference latency of native tract vs
//! the sandboxed guest as a ratio (interleaved, so machine noise hits both).
//!
//! Run: `cargo bench -p medguard-tests --bench latency`

use std::time::{Duration, Instant};

use medguard::sandbox::{CompiledCache, Limits, Runtime};
use medguard_guest_core::{Classifier, InputBatch, ModelSpec};
use medguard_tests::{bundled_model, golden, load_input, model_dir};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let model = bundled_model();
    let guest = medguard::guest::bundled().expect("pinned guest");
    println!(
        "guest component size: {:.1} MiB ({} bytes)",
        guest.bytes().len() as f64 / (1 << 20) as f64,
        guest.bytes().len()
    );

    let runtime = Runtime::new(Limits::default()).expect("runtime");
    let (_, cold) = runtime.load_guest(&guest, None).expect("compile");
    let tmp = tempfile::tempdir().expect("tmp");
    let cache = CompiledCache::open(tmp.path()).expect("cache");
    runtime
        .load_guest(&guest, Some(&cache))
        .expect("fill cache");
    let (program, warm) = runtime.load_guest(&guest, Some(&cache)).expect("cache hit");
    println!(
        "guest start-up: compile {:.2} s, from verified cache {:.3} s",
        cold.elapsed.as_secs_f64(),
        warm.elapsed.as_secs_f64()
    );

    let loads: Vec<Duration> = (0..5)
        .map(|_| {
            let t = Instant::now();
            program.session(&model).expect("session");
            t.elapsed()
        })
        .collect();
    println!(
        "model load in a fresh sandbox (instantiate + parse + optimise), median of 5: {:.1} ms",
        median(loads).as_secs_f64() * 1e3
    );

    let m = model.manifest();
    let spec = ModelSpec {
        channels: m.input.shape.channels,
        height: m.input.shape.height,
        width: m.input.shape.width,
        min_value: m.input.range.min,
        max_value: m.input.range.max,
        classes: m.output.labels.len() as u32,
        max_batch: m.max_batch,
    };
    let t = Instant::now();
    let native = Classifier::load(model.model_bytes(), spec).expect("native");
    println!(
        "model load in native tract: {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );

    let batch = load_input(&model, &model_dir().join(&golden().samples[0].file));
    let native_batch = InputBatch {
        shape: batch.shape.to_vec(),
        data: batch.data.clone(),
    };
    let mut session = program.session(&model).expect("session");
    for _ in 0..20 {
        native.classify(&native_batch).expect("native");
        session.classify(&batch.shape, &batch.data).expect("guest");
    }
    let (mut n, mut g) = (Vec::new(), Vec::new());
    for _ in 0..300 {
        let t = Instant::now();
        native.classify(&native_batch).expect("native");
        n.push(t.elapsed());
        let t = Instant::now();
        session.classify(&batch.shape, &batch.data).expect("guest");
        g.push(t.elapsed());
    }
    let (n, g) = (median(n), median(g));
    println!(
        "inference, batch 1, median of 300 interleaved: native tract {:.3} ms, guest {:.3} ms, ratio guest/native {:.2}x",
        n.as_secs_f64() * 1e3,
        g.as_secs_f64() * 1e3,
        g.as_secs_f64() / n.as_secs_f64()
    );
}
