//! Ledger throughput and proof cost at scale, with a baseline run side by
//! side: the same bytes appended to one plain file with the same batch sizes
//! and one fsync per batch (what any durable log must at least pay).
//!
//! `cargo bench -p medguard-ledger --bench ledger` (1,000,000 entries;
//! MEDGUARD_BENCH_ENTRIES and MEDGUARD_BENCH_THREADS override).

#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use common::inference;

use std::cell::Cell;
use std::io::Write;
use std::time::Instant;

use medguard_ledger::merkle::{self, Hash, NodeSource};
use medguard_ledger::{GroupCommit, Ledger, LedgerError, audit};

/// Counts the perfect-subtree reads a proof makes.
struct Counting<'a>(&'a Ledger, Cell<u64>);

impl NodeSource for Counting<'_> {
    type Error = LedgerError;
    fn perfect(&self, level: u32, index: u64) -> Result<Hash, LedgerError> {
        self.1.set(self.1.get() + 1);
        self.0.perfect(level, index)
    }
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let n = env("MEDGUARD_BENCH_ENTRIES", 1_000_000);
    let threads = env("MEDGUARD_BENCH_THREADS", 256);
    let tmp = tempfile::tempdir_in(
        std::env::var_os("MEDGUARD_BENCH_DIR").unwrap_or_else(|| std::env::temp_dir().into()),
    )
    .unwrap();

    // 1. Group commit from many threads.
    let group = GroupCommit::new(Ledger::open(tmp.path()).unwrap());
    let per = n / threads;
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let group = &group;
            s.spawn(move || {
                for i in 0..per {
                    group.append(inference(t * per + i)).unwrap();
                }
            });
        }
    });
    let took = started.elapsed();
    let ledger = group.into_inner().unwrap();
    let size = ledger.size();
    let cps = {
        let report_dir = tmp.path().join("ledger/checkpoints.log");
        let bytes = std::fs::read(report_dir).unwrap();
        let mut at = 0;
        let mut count = 0u64;
        while at + 8 <= bytes.len() {
            let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            at += 8 + len;
            count += 1;
        }
        count
    };
    let batches = cps.saturating_sub(2).max(1);
    let entry_bytes = serde_json::to_vec(&inference(1)).unwrap().len() as u64;
    let rate = (per * threads) as f64 / took.as_secs_f64();

    // 2. Baseline: the same bytes, same batch sizes, one plain file, one fsync per batch.
    let base_path = tmp.path().join("baseline.log");
    let mut base = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&base_path)
        .unwrap();
    let batch = ((per * threads) / batches).max(1);
    let record = vec![b'x'; entry_bytes as usize + 8];
    let started = Instant::now();
    let mut written = 0;
    while written < per * threads {
        let k = batch.min(per * threads - written);
        let mut buf = Vec::with_capacity(record.len() * k as usize);
        for _ in 0..k {
            buf.extend_from_slice(&record);
        }
        base.write_all(&buf).unwrap();
        base.sync_data().unwrap();
        written += k;
    }
    let base_rate = written as f64 / started.elapsed().as_secs_f64();
    drop(base);
    std::fs::remove_file(&base_path).unwrap();

    // 3. Proofs at full size: reads and time.
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let counting = Counting(&ledger, Cell::new(0));
    let root = ledger.root_at(size).unwrap();
    let proofs = 1000u64;
    let started = Instant::now();
    let mut max_reads = 0;
    for _ in 0..proofs {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let index = rng % size;
        counting.1.set(0);
        let proof = merkle::inclusion_proof(&counting, index, size).unwrap();
        max_reads = max_reads.max(counting.1.get());
        let leaf = merkle::leaf_hash(&ledger.read_entry(index).unwrap());
        merkle::verify_inclusion(index, size, leaf, &proof, root).unwrap();
    }
    let per_proof = started.elapsed() / proofs as u32;
    counting.1.set(0);
    let old = size / 3;
    merkle::consistency_proof(&counting, old, size).unwrap();
    let consistency_reads = counting.1.get();
    drop(ledger);

    // 4. Reopening (recovery check + view) and the full audit.
    let started = Instant::now();
    let ledger = Ledger::open(tmp.path()).unwrap();
    let open = started.elapsed();
    let key = ledger.verifier();
    drop(ledger);
    let started = Instant::now();
    let report = audit(tmp.path(), &key).unwrap();
    let audit_time = started.elapsed();
    assert!(report.problems.is_empty());
    let disk: u64 = std::fs::read_dir(tmp.path().join("ledger"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();

    println!(
        "ledger of {size} entries ({entry_bytes}-byte inference entries), {threads} appending threads:"
    );
    println!(
        "  appends: {rate:.0}/s through group commit ({batches} commits, {:.0} entries each); baseline plain file, same batches, one fsync each: {base_rate:.0}/s; ledger/baseline {:.2}x",
        (per * threads) as f64 / batches as f64,
        rate / base_rate
    );
    println!(
        "  inclusion proof at size {size}: {:.1} us (generate + verify + read the entry), at most {max_reads} node reads (log2 n = {:.1}); consistency proof {old}->{size}: {consistency_reads} reads",
        per_proof.as_secs_f64() * 1e6,
        (size as f64).log2()
    );
    println!(
        "  reopen: {:.1} ms; full audit (recompute the tree, {} checkpoints): {:.1} s; on disk {:.0} MiB",
        open.as_secs_f64() * 1e3,
        report.checkpoints,
        audit_time.as_secs_f64(),
        disk as f64 / (1 << 20) as f64
    );
}
