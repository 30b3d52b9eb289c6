//! Per-image time of the browser build next to the sandboxed guest and
//! native tract, on this machine in one run: screen and classify of one
//! sample image (the image and its median-squeezed copy through the model),
//! medians over the same number of calls.
//!
//! - page: the demo page's client in the system Chromium, through its Web
//!   Worker (postMessage both ways included: what a page pays);
//! - guest: the wasmtime sandbox, one session, `screen` per call;
//! - native: the same code natively (`medguard_web::guard::Model`, tract with
//!   its AVX kernels), on a thread of its own (see the latency benchmark on
//!   the AVX-SSE transition penalty).
//!
//! Needs the built site (`scripts/web.sh build`) and the npm tools. Writes
//! `target/bench/web.json` (name, value, unit). Run: `scripts/bench-web.sh`.

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    native::run();
}

#[cfg(not(target_arch = "wasm32"))]
#[allow(clippy::unwrap_used, clippy::expect_used)] // A benchmark fails loudly.
mod native {
    use std::path::Path;
    use std::process::Command;
    use std::time::Instant;

    use medguard::sandbox::ScreenOptions;
    use medguard_tests::{
        bundled_model, files_in_memory, load_input, model_dir, repo_root, shared_program,
    };
    use medguard_web::guard::{Model, Policy};

    const ROUNDS: usize = 200;
    const IMAGE: &str = "samples/normal-2.png";

    fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }

    fn native_ms() -> f64 {
        std::thread::spawn(|| {
            let trust = repo_root().join("models/trust");
            let text = std::fs::read_to_string(trust.join("demo-policy.toml")).unwrap();
            let policy = Policy::parse(&text, |n| {
                std::fs::read_to_string(trust.join(n)).map_err(|e| e.to_string())
            })
            .unwrap();
            let files = files_in_memory(&model_dir());
            let model = Model::admit(&policy, &files, jiff::Timestamp::now()).unwrap();
            let bytes = &files[IMAGE];
            let mut times = Vec::new();
            for i in 0..ROUNDS + 10 {
                let t = Instant::now();
                model.classify(None, bytes, i as u64, "").unwrap();
                if i >= 10 {
                    times.push(t.elapsed().as_secs_f64() * 1e3);
                }
            }
            median(times)
        })
        .join()
        .unwrap()
    }

    fn guest_ms() -> f64 {
        let model = bundled_model();
        let batch = load_input(&model, &model_dir().join(IMAGE));
        let mut session = shared_program().session(&model).unwrap();
        let mut times = Vec::new();
        for i in 0..ROUNDS + 10 {
            let t = Instant::now();
            session
                .screen(
                    &batch.shape,
                    &batch.data,
                    ScreenOptions {
                        seed: i as u64,
                        source_bits: batch.source_bits,
                        withhold_rejected: true,
                    },
                )
                .unwrap();
            if i >= 10 {
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        median(times)
    }

    /// The page's median per-call time, its load-to-ready time and its
    /// load-to-first-verdict time.
    fn page_ms(site: &Path) -> (f64, f64, f64) {
        let out = Command::new("node")
            .arg(repo_root().join("web/tests/bench.mjs"))
            .arg(site)
            .arg(IMAGE)
            .arg(ROUNDS.to_string())
            .current_dir(repo_root().join("web"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let times = v["page_ms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_f64().unwrap())
            .collect();
        (
            median(times),
            v["load_to_ready_ms"].as_f64().unwrap(),
            v["load_to_first_verdict_ms"].as_f64().unwrap(),
        )
    }

    pub fn run() {
        let site = std::env::var_os("MEDGUARD_WEB_SITE")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| repo_root().join("target/web-site"));
        let wasm = site.join("package/dist/medguard_web_bg.wasm");
        let raw = std::fs::metadata(&wasm).unwrap().len() as f64;
        let gzip = Command::new("gzip")
            .args(["-9", "-c"])
            .arg(&wasm)
            .output()
            .unwrap();
        let gzip = gzip.stdout.len() as f64;
        // The guest first: wasm code in a process whose other thread already
        // ran tract's AVX kernels measured slower (see the latency benchmark).
        let guest = guest_ms();
        let native = native_ms();
        let (page, ready, first) = page_ms(&site);
        let figures = [
            ("web module size", raw / 1e6, "MB"),
            ("web module size, gzip -9", gzip / 1e6, "MB"),
            (
                "page load to ready (model verified and loaded)",
                ready,
                "ms",
            ),
            ("page load to first verdict", first, "ms"),
            ("screen+classify, native tract, median", native, "ms"),
            ("screen+classify, wasmtime guest, median", guest, "ms"),
            (
                "screen+classify, Chromium page via worker, median",
                page,
                "ms",
            ),
            ("page/native", page / native, "x"),
            ("page/guest", page / guest, "x"),
        ];
        let mut json = Vec::new();
        for (name, value, unit) in figures {
            println!("{name}: {value:.3} {unit}");
            json.push(serde_json::json!({"name": name, "value": value, "unit": unit}));
        }
        let path = repo_root().join("target/bench/web.json");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
        println!("figures written to {}", path.display());
    }
}
