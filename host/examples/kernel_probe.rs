//! The kernel microbenchmark (README, Measurements): the guest's
//! matrix-product kernel against tract's wasm 8x8 loop, compiled by
//! wasmtime under the sandbox's engine settings and two variations of them.
//! Run it with `scripts/kernel-probe.sh`, which builds the wasm module
//! (`tests/kernel-probe`) first; `--check` compares the kernels' tiles bit
//! for bit and times nothing (CI runs it so).

use std::time::Instant;

use anyhow::{Context, Result, ensure};
use wasmtime::{Config, Engine, Instance, Module, Store};

/// The engines compared: what the sandbox ships (host/src/sandbox.rs), and
/// the same with each of the two settings that cost the most switched.
const ENGINES: [(&str, bool, bool); 3] = [
    ("sandbox: deadline on, NaNs left to the guest", true, false),
    ("deadline on, wasmtime canonicalises NaNs", true, true),
    ("no deadline, NaNs left to the guest", false, false),
];

/// The kernels of the module's `run`, by its `variant`.
const KERNELS: [&str; 2] = ["tract 8x8", "guest"];

/// Product depths: the bundled model's convolutions have 9, 288, 576 and
/// 1,152; 144 is a shallower one.
const DEPTHS: [u32; 4] = [144, 288, 576, 1152];

/// Multiply-adds per timed call.
const WORK: u64 = 40_000_000;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .context("usage: kernel_probe MODULE.wasm [--check] (scripts/kernel-probe.sh builds it)")?;
    // CI runs the bit checks alone: timings there mean nothing.
    let check_only = args.any(|a| a == "--check");
    let bytes = std::fs::read(&path).with_context(|| format!("reading {path}"))?;
    for (engine_name, deadline, canonical_nans) in ENGINES {
        let mut config = Config::new();
        config
            .epoch_interruption(deadline)
            .cranelift_nan_canonicalization(canonical_nans)
            .wasm_relaxed_simd(true)
            .relaxed_simd_deterministic(true);
        let engine = Engine::new(&config)?;
        let module = Module::new(&engine, &bytes)?;
        let mut store = Store::new(&engine, ());
        if deadline {
            // Far away: the check runs at every loop head, and never fires.
            store.set_epoch_deadline(u64::MAX / 2);
        }
        let instance = Instance::new(&mut store, &module, &[])?;
        instance
            .get_typed_func::<(), ()>(&mut store, "init")?
            .call(&mut store, ())?;
        let run = instance.get_typed_func::<(u32, u32, u32), u64>(&mut store, "run")?;
        println!("{engine_name}");
        // Every remainder of the guest's three-step loop, and depths past it,
        // bit for bit, before any timing.
        for k in (0..=20).chain(DEPTHS) {
            let [tract, guest] = [0, 1].map(|variant| run.call(&mut store, (variant, k, 1)));
            let (tract, guest) = (tract?, guest?);
            ensure!(
                tract == guest,
                "k = {k}: the kernels' tiles differ (hashes {tract:#x} and {guest:#x})"
            );
        }
        if check_only {
            println!("  tiles agree bit for bit for k = 0 to 20 and {DEPTHS:?}");
            continue;
        }
        for k in DEPTHS {
            let reps = u32::try_from(WORK / (64 * u64::from(k)))?;
            let mut best = [f64::MAX; KERNELS.len()];
            let mut hashes = [0u64; KERNELS.len()];
            // Interleaved, best of 7: the machine's noise only ever slows a run.
            for _ in 0..7 {
                for (variant, (best, hash)) in best.iter_mut().zip(&mut hashes).enumerate() {
                    let started = Instant::now();
                    *hash = run.call(&mut store, (u32::try_from(variant)?, k, reps))?;
                    *best = best.min(started.elapsed().as_secs_f64());
                }
            }
            ensure!(
                hashes[0] == hashes[1],
                "k = {k}: the kernels' tiles differ (hashes {:#x} and {:#x})",
                hashes[0],
                hashes[1]
            );
            let flops = 2.0 * WORK as f64;
            let rates = best.map(|t| flops / t / 1e9);
            println!(
                "  k = {k:>4}: {} {:5.1} GFLOP/s, {} {:5.1} GFLOP/s ({:.2}x)",
                KERNELS[0],
                rates[0],
                KERNELS[1],
                rates[1],
                rates[1] / rates[0]
            );
        }
    }
    Ok(())
}
