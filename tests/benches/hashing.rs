//! Hashing throughput of medguard's model-directory digests against
//! `openssl dgst -sha256` on the same file, interleaved in one run, reported
//! as a ratio (issue 4's target: at least 0.7x OpenSSL's speed).
//!
//! `cargo bench -p medguard-tests --bench hashing`

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

const SIZE: usize = 256 << 20;
const ROUNDS: usize = 7;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("model.onnx");
    {
        let mut f = std::fs::File::create(&path).expect("create");
        // Incompressible-looking bytes; the content does not matter to SHA-256.
        let chunk: Vec<u8> = (0..1 << 20)
            .map(|i: u32| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        for _ in 0..SIZE / chunk.len() {
            f.write_all(&chunk).expect("write");
        }
        f.sync_all().expect("sync");
    }
    let ours_digest =
        || medguard::signing::directory_digests(dir.path(), &[]).expect("digest")["model.onnx"];
    let theirs_digest = || {
        let out = Command::new("openssl")
            .args(["dgst", "-sha256", "-r"])
            .arg(&path)
            .output()
            .expect("openssl must be installed for this benchmark");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(
        ours_digest().to_string(),
        theirs_digest(),
        "both must compute the same digest"
    );
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let t = Instant::now();
        ours_digest();
        ours.push(t.elapsed());
        let t = Instant::now();
        theirs_digest();
        theirs.push(t.elapsed());
    }
    let (o, t) = (median(ours), median(theirs));
    let mib = SIZE as f64 / (1 << 20) as f64;
    println!(
        "sha-256 of a {mib:.0} MiB file, median of {ROUNDS} interleaved (page cache warm): medguard {:.0} MiB/s, openssl dgst {:.0} MiB/s, medguard/openssl speed {:.2}x",
        mib / o.as_secs_f64(),
        mib / t.as_secs_f64(),
        t.as_secs_f64() / o.as_secs_f64()
    );
}
