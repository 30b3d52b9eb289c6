//! Measures what the README reports, in one run on one machine:
//! guest size, guest compile time (cold and from the verified cache), model
//! load time inside the guest, parity, and per-inference latency of native
//! tract vs the sandboxed guest as a ratio (interleaved, so machine noise hits
//! both).
//!
//! Native tract runs on a thread of its own. Its hand-written AVX kernels
//! leave the CPU's upper vector state dirty, and wasm code that later runs on
//! the same thread was measured ~75x slower (an AVX-SSE transition penalty);
//! the production host never links tract, so it never pays this.
//!
//! Every figure is also written as JSON (`[{"name", "value", "unit"}]`) to
//! `$MEDGUARD_BENCH_JSON`, default `target/bench/latency.json`, so that runs
//! can be compared between commits.
//!
//! Run: `cargo bench -p medguard-tests --bench latency`

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use medguard::input::Batch;
use medguard::sandbox::{CompiledCache, Limits, Runtime, ScreenOptions};
use medguard_guest_core::{Classifier, InputBatch, ModelSpec};
use medguard_tests::{bundled_model, golden, load_input, model_dir, native_spec};

const ROUNDS: usize = 200;
/// Fresh sandboxes instantiated from the prepared snapshot.
const INSTANTIATIONS: usize = 10_000;

/// The figures of one run, printed as they come and written as JSON at the end.
#[derive(Default)]
struct Figures(Vec<serde_json::Value>);

impl Figures {
    fn add(&mut self, name: &str, value: f64, unit: &str) {
        self.0
            .push(serde_json::json!({"name": name, "value": value, "unit": unit}));
    }

    fn write(&self) {
        let path = std::env::var_os("MEDGUARD_BENCH_JSON")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| medguard_tests::repo_root().join("target/bench/latency.json"));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("create the figures directory");
        }
        let json = serde_json::to_vec_pretty(&self.0).expect("figures are JSON");
        std::fs::write(&path, json).expect("write the figures");
        println!("figures written to {}", path.display());
    }
}

/// Resident set size of this process, from /proc (Linux).
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("statm's second field is the resident page count");
    pages * 4096
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Native tract on its own thread: send a batch, receive the probabilities
/// and the time `classify` took.
struct NativeWorker {
    requests: mpsc::Sender<Batch>,
    answers: mpsc::Receiver<(Vec<Vec<f32>>, Duration)>,
}

impl NativeWorker {
    /// Starts the thread and returns the worker with the model's load time.
    fn spawn(bytes: Vec<u8>, spec: ModelSpec) -> (Self, Duration) {
        let (req_tx, req_rx) = mpsc::channel::<Batch>();
        let (resp_tx, resp_rx) = mpsc::channel();
        let (load_tx, load_rx) = mpsc::channel();
        thread::spawn(move || {
            let t = Instant::now();
            let native = Classifier::load(&bytes, spec).expect("native tract loads the model");
            load_tx.send(t.elapsed()).expect("bench is waiting");
            for batch in req_rx {
                let input = InputBatch {
                    shape: batch.shape.to_vec(),
                    data: batch.data,
                };
                let t = Instant::now();
                let probs = native.classify(&input).expect("native classifies");
                if resp_tx.send((probs, t.elapsed())).is_err() {
                    break;
                }
            }
        });
        let load = load_rx.recv().expect("native thread started");
        (
            Self {
                requests: req_tx,
                answers: resp_rx,
            },
            load,
        )
    }

    fn classify(&self, b: &Batch) -> (Vec<Vec<f32>>, Duration) {
        self.requests.send(b.clone()).expect("native thread alive");
        self.answers.recv().expect("native answers")
    }
}

/// Floating-point operations of the bundled model's matrix products for one
/// image (two per multiply-add), from its architecture
/// (models/pneumonia/train.py): three blocks of two 3x3 convolutions,
/// padding 1, at 28, 14 and 7 pixels square, and a 128 -> 2 linear layer.
fn bundled_model_matmul_flops() -> f64 {
    let convs = [
        (28, 1, 32),
        (28, 32, 32),
        (14, 32, 64),
        (14, 64, 64),
        (7, 64, 128),
        (7, 128, 128),
    ];
    let macs: usize = convs
        .iter()
        .map(|&(side, cin, cout)| side * side * cout * cin * 9)
        .sum::<usize>()
        + 128 * 2;
    2.0 * macs as f64
}

/// This CPU's f32 peak with 256-bit fused multiply-adds, measured: twelve
/// independent FMA chains (enough to cover both FMA ports' latency).
/// `None` without AVX2 and FMA.
fn native_fma_peak_gflops() -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        #[allow(unsafe_code)]
        // SAFETY: both target features were detected on this CPU just above.
        return Some(unsafe { fma_peak() });
    }
    None
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn fma_peak() -> f64 {
    use std::arch::x86_64::{__m256, _mm256_fmadd_ps, _mm256_set1_ps};
    const CHAINS: usize = 12;
    const ITERATIONS: usize = 20_000_000;
    let mut acc: [__m256; CHAINS] = [_mm256_set1_ps(0.0); CHAINS];
    let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
    let started = Instant::now();
    for _ in 0..ITERATIONS {
        for c in acc.iter_mut() {
            *c = _mm256_fmadd_ps(*c, a, b);
        }
    }
    let elapsed = started.elapsed();
    std::hint::black_box(acc);
    (ITERATIONS * CHAINS * 16) as f64 / elapsed.as_secs_f64() / 1e9
}

/// One key for an operator however it is named: tract's `name()` natively
/// (`Im2col`, `MaxPool`) and the type in a guest frame (`Im2Col`,
/// `OptMaxPool`, `Reduce<Sum>`).
fn operator_key(name: &str) -> String {
    let name = name.split('<').next().unwrap_or(name).to_lowercase();
    name.strip_prefix("opt").map(str::to_owned).unwrap_or(name)
}

/// Where the time goes at batch 1: native tract's time per operator type
/// (timed node by node on a thread of its own), and the guest's, from its call
/// stack sampled at every epoch tick and attributed to the innermost tract
/// operator `eval` on it.
fn profile(
    figures: &mut Figures,
    model: &medguard_attest::AttestedModel,
    session: &mut medguard::sandbox::Session,
    sample: &Batch,
) {
    const CALLS: usize = 1000;
    let input = InputBatch {
        shape: sample.shape.to_vec(),
        data: sample.data.clone(),
    };
    let (bytes, spec) = (model.model_bytes().to_vec(), native_spec(model));
    let native_input = input.clone();
    let native = thread::spawn(move || {
        let classifier = Classifier::load(&bytes, spec).expect("native tract loads the model");
        classifier
            .profile(&native_input, CALLS)
            .expect("native profile")
    })
    .join()
    .expect("native profile thread");
    let mut native_by_op: std::collections::BTreeMap<String, Duration> = Default::default();
    for (op, _, time) in &native {
        *native_by_op.entry(operator_key(op)).or_default() += *time;
    }
    let native_total: Duration = native_by_op.values().sum();

    let t = Instant::now();
    let samples = session
        .profile_classify(&input.shape, &input.data, CALLS)
        .expect("guest profile");
    let guest_total = t.elapsed();
    let mut guest_by_op: std::collections::BTreeMap<String, usize> = Default::default();
    let mut leaves: std::collections::BTreeMap<String, usize> = Default::default();
    for stack in &samples {
        let stack: Vec<String> = stack
            .iter()
            .map(|f| format!("{:#}", rustc_demangle::demangle(f)))
            .collect();
        let op = stack
            .iter()
            .find_map(|f| {
                let (ty, rest) = f.strip_prefix('<')?.split_once(" as ")?;
                let is_eval = rest.starts_with("tract_core::ops::EvalOp>::eval")
                    || rest.starts_with("tract_core::ops::OpState>::eval");
                is_eval.then(|| operator_key(ty.rsplit("::").next().unwrap_or(ty)))
            })
            .unwrap_or_else(|| "(outside operators)".to_owned());
        *guest_by_op.entry(op).or_default() += 1;
        if let Some(leaf) = stack.first() {
            *leaves.entry(leaf.clone()).or_default() += 1;
        }
    }
    let n = samples.len().max(1) as f64;
    println!(
        "profile, batch 1, {CALLS} calls: native {:.3} ms per call in operators; guest {:.3} ms per call, {} stack samples",
        ms(native_total) / CALLS as f64,
        ms(guest_total) / CALLS as f64,
        samples.len()
    );
    let mut ops: Vec<&String> = native_by_op.keys().chain(guest_by_op.keys()).collect();
    ops.sort();
    ops.dedup();
    ops.sort_by_key(|op| std::cmp::Reverse(guest_by_op.get(*op).copied().unwrap_or(0)));
    println!("  operator | native ms/call | guest ms/call (sampled) | guest/native");
    for op in ops {
        let native_ms = native_by_op
            .get(op)
            .map(|d| ms(*d) / CALLS as f64)
            .unwrap_or(0.0);
        let share = *guest_by_op.get(op).unwrap_or(&0) as f64 / n;
        let guest_ms = share * ms(guest_total) / CALLS as f64;
        let ratio = if native_ms > 0.0 {
            guest_ms / native_ms
        } else {
            f64::NAN
        };
        println!(
            "  {op} | {native_ms:.3} | {guest_ms:.3} ({:.1}%) | {ratio:.2}x",
            share * 100.0
        );
        figures.add(
            &format!("profile batch 1, native ms/call, {op}"),
            native_ms,
            "ms",
        );
        figures.add(
            &format!("profile batch 1, guest ms/call, {op}"),
            guest_ms,
            "ms",
        );
    }
    // How close each side runs to its own peak on the model's matrix
    // products (the 3x3 convolutions as im2col + GEMM, and the last linear
    // layer).
    let matmul_flops = bundled_model_matmul_flops();
    // (A guest without a name section, wasm-opt's output, has no operator
    // frames to attribute.)
    let guest_named = guest_by_op.contains_key("matmul");
    if let Some(peak) = native_fma_peak_gflops().filter(|_| guest_named) {
        let native_ms = native_by_op
            .get("matmul")
            .map_or(0.0, |d| ms(*d) / CALLS as f64);
        let guest_ms =
            *guest_by_op.get("matmul").unwrap_or(&0) as f64 / n * ms(guest_total) / CALLS as f64;
        let native_gflops = matmul_flops / native_ms / 1e6;
        let guest_gflops = matmul_flops / guest_ms / 1e6;
        println!(
            "  matrix products ({:.1} MFLOP per image): native {native_gflops:.1} GFLOP/s = {:.0}% of its peak ({peak:.1} GFLOP/s, 256-bit FMA, measured); guest {guest_gflops:.1} GFLOP/s = {:.0}% of its peak ({:.1} GFLOP/s: 128-bit FMA on the same ports, half the native figure)",
            matmul_flops / 1e6,
            native_gflops / peak * 100.0,
            guest_gflops / (peak / 2.0) * 100.0,
            peak / 2.0
        );
        figures.add("peak, native 256-bit FMA", peak, "GFLOP/s");
        figures.add("matrix products, native", native_gflops, "GFLOP/s");
        figures.add("matrix products, guest", guest_gflops, "GFLOP/s");
        figures.add(
            "matrix products, native share of its peak",
            native_gflops / peak,
            "ratio",
        );
        figures.add(
            "matrix products, guest share of its peak",
            guest_gflops / (peak / 2.0),
            "ratio",
        );
    }
    let mut leaves: Vec<_> = leaves.into_iter().collect();
    leaves.sort_by_key(|leaf| std::cmp::Reverse(leaf.1));
    println!("  guest functions with the most samples (innermost frame):");
    for (name, count) in leaves.iter().take(12) {
        println!("    {:5.1}%  {name}", *count as f64 / n * 100.0);
    }
}

fn main() {
    let mut figures = Figures::default();
    let model = bundled_model();
    let guest = medguard::guest::bundled().expect("pinned guest");
    let size = guest.bytes().len();
    println!(
        "guest component size: {:.1} MiB ({size} bytes)",
        size as f64 / (1 << 20) as f64
    );
    figures.add("guest component size", size as f64, "bytes");

    let runtime = Runtime::new(Limits::default()).expect("runtime");
    let (_, cold) = runtime.load_guest(&guest, None).expect("compile");
    let tmp = tempfile::tempdir().expect("tmp");
    let cache = CompiledCache::open(tmp.path()).expect("cache");
    runtime
        .load_guest(&guest, Some(&cache))
        .expect("fill cache");
    let warm: Vec<Duration> = (0..9)
        .map(|_| {
            runtime
                .load_guest(&guest, Some(&cache))
                .expect("cache hit")
                .1
                .elapsed
        })
        .collect();
    let (program, _) = runtime.load_guest(&guest, Some(&cache)).expect("cache hit");
    let warm = median(warm);
    println!(
        "guest start-up: compile {:.2} s, from the verified cache {:.1} ms (median of 9)",
        cold.elapsed.as_secs_f64(),
        ms(warm)
    );
    figures.add("guest start-up, compile", ms(cold.elapsed), "ms");
    figures.add("guest start-up, from the verified cache", ms(warm), "ms");
    // Side by side: only reading the same artifact into memory, the floor
    // that any load of it pays before it is checked and mapped.
    let artifact = std::fs::read_dir(tmp.path())
        .expect("list the cache")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("guest-"))
        })
        .expect("the compiled guest in the cache");
    let reads: Vec<Duration> = (0..9)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(std::fs::read(&artifact).expect("read the artifact"));
            t.elapsed()
        })
        .collect();
    let read = median(reads);
    let artifact_size = std::fs::metadata(&artifact).expect("artifact size").len();
    println!(
        "compiled guest: {:.1} MiB; reading it alone {:.1} ms (median of 9): start-up/read {:.2}x",
        artifact_size as f64 / (1 << 20) as f64,
        ms(read),
        ms(warm) / ms(read)
    );
    figures.add("compiled guest size", artifact_size as f64, "bytes");
    figures.add("compiled guest, read alone", ms(read), "ms");

    let loads: Vec<Duration> = (0..9)
        .map(|_| {
            let t = Instant::now();
            program.session(&model).expect("session");
            t.elapsed()
        })
        .collect();

    let m = model.manifest();
    let (native, native_load) =
        NativeWorker::spawn(model.model_bytes().to_vec(), native_spec(&model));
    println!(
        "model load (parse + type-check + optimise): guest {:.1} ms (fresh sandbox incl. instantiation, median of 9), native tract {:.1} ms",
        ms(median(loads.clone())),
        ms(native_load)
    );
    figures.add(
        "fresh sandbox with model load, guest",
        ms(median(loads)),
        "ms",
    );
    figures.add("model load, native tract", ms(native_load), "ms");

    // The prepared snapshot: taken, compiled and cached once, then every
    // session is a fresh instance of it.
    let t = Instant::now();
    let first = program.prepare(&model).expect("prepare the snapshot");
    let prepare_cold = t.elapsed();
    let t = Instant::now();
    let again = program.prepare(&model).expect("prepare from the cache");
    let prepare_warm = t.elapsed();
    println!(
        "prepared snapshot: first {:.2} s ({:?}), again {:.1} ms ({:?})",
        prepare_cold.as_secs_f64(),
        first.cache,
        ms(prepare_warm),
        again.cache
    );
    figures.add("snapshot prepare, first", ms(prepare_cold), "ms");
    figures.add(
        "snapshot prepare, from the verified cache",
        ms(prepare_warm),
        "ms",
    );
    for _ in 0..100 {
        program.session(&model).expect("warm-up session");
    }
    let rss_before = rss_bytes();
    let mut starts = Vec::with_capacity(INSTANTIATIONS);
    let mut rss_at_1000 = 0;
    for i in 0..INSTANTIATIONS {
        let t = Instant::now();
        let session = program.session(&model).expect("session from the snapshot");
        starts.push(t.elapsed());
        drop(session);
        if i + 1 == 1000 {
            rss_at_1000 = rss_bytes();
        }
    }
    let rss_after = rss_bytes();
    starts.sort();
    let (p50, p99) = (percentile(&starts, 0.5), percentile(&starts, 0.99));
    println!(
        "fresh sandbox from the snapshot, ready to infer, {INSTANTIATIONS} instantiations: p50 {:.1} us, p99 {:.1} us; RSS {:.1} MiB before, {:.1} MiB after 1,000, {:.1} MiB after {INSTANTIATIONS}",
        p50.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6,
        rss_before as f64 / (1 << 20) as f64,
        rss_at_1000 as f64 / (1 << 20) as f64,
        rss_after as f64 / (1 << 20) as f64,
    );
    figures.add(
        "fresh sandbox from the snapshot, p50",
        p50.as_secs_f64() * 1e6,
        "us",
    );
    figures.add(
        "fresh sandbox from the snapshot, p99",
        p99.as_secs_f64() * 1e6,
        "us",
    );
    figures.add(
        "RSS after 1,000 snapshot sandboxes",
        rss_at_1000 as f64,
        "bytes",
    );
    figures.add(
        "RSS after 10,000 snapshot sandboxes",
        rss_after as f64,
        "bytes",
    );

    // Parity, measured: the tests assert <= 1e-5 (native) and <= 1e-4 (PyTorch).
    let labels = &m.output.labels;
    let (mut vs_native, mut vs_torch) = (0f64, 0f64);
    let mut session = program.session(&model).expect("session");
    for sample in &golden().samples {
        let b = load_input(&model, &model_dir().join(&sample.file));
        let g = session.classify(&b.shape, &b.data).expect("guest");
        let (t, _) = native.classify(&b);
        for (i, label) in labels.iter().enumerate() {
            vs_native = vs_native.max((g[0][i] - t[0][i]).abs() as f64);
            vs_torch = vs_torch.max((g[0][i] as f64 - sample.probabilities[label]).abs());
        }
    }
    println!(
        "parity on the golden samples: max |guest - native tract| = {vs_native:.2e}, max |guest - PyTorch| = {vs_torch:.2e}"
    );
    figures.add(
        "parity, max |guest - native tract|",
        vs_native,
        "probability",
    );
    figures.add("parity, max |guest - PyTorch|", vs_torch, "probability");

    let sample = load_input(&model, &model_dir().join(&golden().samples[0].file));
    for batch_size in [1usize, 16] {
        let batch = Batch {
            shape: [batch_size as u32, 1, 28, 28],
            data: sample.data.repeat(batch_size),
            source_bits: sample.source_bits,
        };
        for _ in 0..10 {
            native.classify(&batch);
            session.classify(&batch.shape, &batch.data).expect("guest");
        }
        let (mut n, mut g) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            n.push(native.classify(&batch).1);
            let t = Instant::now();
            session.classify(&batch.shape, &batch.data).expect("guest");
            g.push(t.elapsed());
        }
        let (n, g) = (median(n), median(g));
        let ratio = g.as_secs_f64() / n.as_secs_f64();
        println!(
            "inference, batch {batch_size}, median of {ROUNDS} interleaved: native tract {:.3} ms, guest {:.3} ms, guest/native {ratio:.2}x",
            ms(n),
            ms(g),
        );
        figures.add(
            &format!("inference batch {batch_size}, native tract"),
            ms(n),
            "ms",
        );
        figures.add(&format!("inference batch {batch_size}, guest"), ms(g), "ms");
        figures.add(
            &format!("inference batch {batch_size}, guest/native"),
            ratio,
            "ratio",
        );
    }

    profile(&mut figures, &model, &mut session, &sample);

    // Screening cost: the guest's `screen` (image + every variant the profile's
    // statistics need, one batch) against its bare `classify`, same session,
    // interleaved. Issue 3's target: at most 2x.
    let options = ScreenOptions {
        seed: 1,
        source_bits: 8,
        withhold_rejected: true,
    };
    for batch_size in [1usize, 16] {
        let batch = Batch {
            shape: [batch_size as u32, 1, 28, 28],
            data: sample.data.repeat(batch_size),
            source_bits: sample.source_bits,
        };
        let (mut bare, mut screened) = (Vec::new(), Vec::new());
        for round in 0..ROUNDS + 10 {
            let t = Instant::now();
            session.classify(&batch.shape, &batch.data).expect("guest");
            let b = t.elapsed();
            let t = Instant::now();
            session
                .screen(&batch.shape, &batch.data, options)
                .expect("guest screens");
            let sc = t.elapsed();
            if round >= 10 {
                bare.push(b);
                screened.push(sc);
            }
        }
        let (b, sc) = (median(bare), median(screened));
        let ratio = sc.as_secs_f64() / b.as_secs_f64();
        println!(
            "screening, batch {batch_size}, median of {ROUNDS} interleaved: classify {:.3} ms, screen {:.3} ms, screen/classify {ratio:.2}x",
            ms(b),
            ms(sc),
        );
        figures.add(
            &format!("screening batch {batch_size}, screen/classify"),
            ratio,
            "ratio",
        );
    }
    figures.write();
}
