//! The baseline `scripts/load-bench.sh` sets `medguard serve` against: the
//! same guard calls the server makes for one inference request (a fresh
//! sandbox session from the model's prepared snapshot, screening, the ledger
//! entry and its receipt), in a bare
//! loop in process, on `threads` threads, with no HTTP, JSON or queue. Prints
//! one JSON line: requests, seconds, requests per second, p50 and p99 in ms.
//! With `--body FILE` it instead writes the Open Inference Protocol request
//! for the same image (UINT8 pixels), the body the load generator sends.
//!
//! cargo run --release --example serve_baseline -- DATA_DIR POLICY.toml MODEL_DIR IMAGE.png REQUESTS THREADS
//! cargo run --release --example serve_baseline -- --body FILE POLICY.toml MODEL_DIR IMAGE.png

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use medguard::guard::{Admission, ClassifyOptions, Guard, ScreeningPolicy, fresh_seed};
use medguard::sandbox::{Limits, Runtime};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: serve_baseline DATA_DIR POLICY.toml MODEL_DIR IMAGE.png REQUESTS THREADS\n       serve_baseline --body FILE POLICY.toml MODEL_DIR IMAGE.png";
    let (data_dir, body_file, rest) = match args.as_slice() {
        [flag, file, rest @ ..] if flag == "--body" => (None, Some(file.clone()), rest),
        [data, rest @ ..] => (Some(data.clone()), None, rest),
        _ => bail!("{usage}"),
    };
    let scratch = tempfile::tempdir()?;
    let data_dir = data_dir.unwrap_or_else(|| scratch.path().display().to_string());
    let (policy_path, model_dir, image, runs) = match rest {
        [p, m, i] if body_file.is_some() => (p, m, i, None),
        [p, m, i, n, t] => (p, m, i, Some((n.parse::<usize>()?, t.parse::<usize>()?))),
        _ => bail!("{usage}"),
    };
    let (policy, sha256) = medguard::admission::load_policy(policy_path.as_ref())?;
    let guard = Guard::open(
        data_dir.as_ref(),
        medguard::guard::NamedPolicy {
            policy,
            sha256,
            name: policy_path.clone(),
        },
    )?;
    let model = match guard.admit(model_dir.as_ref())? {
        Admission::Admitted { model, .. } => model,
        Admission::Refused { error, .. } => bail!("refused: {error}"),
    };
    let m = model.manifest();
    let bytes = std::fs::read(image).with_context(|| format!("reading {image}"))?;
    let batch = medguard::input::decode(&bytes, &m.input, m.max_batch)?;
    if let Some(file) = body_file {
        let pixels: Vec<u8> = batch
            .data
            .iter()
            .map(|v| (v * 255.0).round() as u8)
            .collect();
        let [n, c, h, w] = batch.shape;
        let body = serde_json::json!({
            "inputs": [{"name": m.input.tensor, "shape": [n, c, h, w], "datatype": "UINT8", "data": pixels}],
        });
        std::fs::write(&file, body.to_string()).with_context(|| format!("writing {file}"))?;
        return Ok(());
    }
    let Some((requests, threads)) = runs else {
        bail!("{usage}");
    };
    let guest = medguard::guest::bundled()?;
    let (program, _) = Runtime::new(Limits::default())?.load_guest(&guest, None)?;
    let guard = guard.with_sandbox(program);
    // Ready as the server is before it listens: the model's snapshot
    // prepared, so that each request's fresh sandbox starts from it.
    match guard.prepare(&model)? {
        Err(why) => bail!("the model does not run: {why}"),
        Ok(medguard::guard::Readiness::LoadedPerSession(why)) => {
            eprintln!("serve_baseline: no snapshot ({why}); each request loads the model")
        }
        Ok(medguard::guard::Readiness::Prepared(_)) => {}
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let started = Instant::now();
    let mut latencies: Vec<Duration> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads.max(1))
            .map(|_| {
                s.spawn(|| -> anyhow::Result<Vec<Duration>> {
                    let mut mine = Vec::new();
                    while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < requests {
                        let t = Instant::now();
                        let options = ClassifyOptions {
                            seed: fresh_seed()?,
                            policy: ScreeningPolicy::Enforce,
                            allow_unscreened: false,
                        };
                        guard.classify_batch(&model, &batch, options, None)?;
                        mine.push(t.elapsed());
                    }
                    Ok(mine)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("worker"))
            .collect::<anyhow::Result<Vec<_>>>()
            .map(|v| v.concat())
    })?;
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort();
    let ms =
        |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3;
    println!(
        "{}",
        serde_json::json!({
            "threads": threads, "requests": latencies.len(), "seconds": seconds,
            "rps": latencies.len() as f64 / seconds, "p50_ms": ms(0.5), "p99_ms": ms(0.99),
        })
    );
    Ok(())
}
