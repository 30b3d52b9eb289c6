//! Hashing throughput of medguard against `openssl dgst -sha256` on the same
//! file, interleaved in one run, reported as ratios (issue 4's target: at
//! least 0.7x OpenSSL's speed). Two medguard paths: the streamed digest of a
//! signed data file, and admission's read of the model file, hashed chunk by chunk as it arrives
//! (the bytes hashed are the bytes the sandbox gets).
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
    let ours_digest = || medguard::signing::digest_capped(&path).expect("digest");
    let admission_digest = || {
        medguard::model_dir::read_hashed(&path, medguard::model_dir::MODEL_MAX_BYTES)
            .expect("read")
            .digest()
    };
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
    assert_eq!(ours_digest(), admission_digest());
    let (mut ours, mut admission, mut theirs) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let t = Instant::now();
        ours_digest();
        ours.push(t.elapsed());
        let t = Instant::now();
        admission_digest();
        admission.push(t.elapsed());
        let t = Instant::now();
        theirs_digest();
        theirs.push(t.elapsed());
    }
    let (o, a, t) = (median(ours), median(admission), median(theirs));
    let mib = SIZE as f64 / (1 << 20) as f64;
    println!(
        "sha-256 of a {mib:.0} MiB file, median of {ROUNDS} interleaved (page cache warm): medguard streamed {:.0} MiB/s, medguard admission (read into memory, hashed while reading) {:.0} MiB/s, openssl dgst {:.0} MiB/s; speed vs openssl: streamed {:.2}x, admission {:.2}x",
        mib / o.as_secs_f64(),
        mib / a.as_secs_f64(),
        mib / t.as_secs_f64(),
        t.as_secs_f64() / o.as_secs_f64(),
        t.as_secs_f64() / a.as_secs_f64()
    );
}
