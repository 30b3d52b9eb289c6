//! Shared by the ledger's tests and benchmark.

/// A realistic inference entry, distinct per `seed`.
pub fn inference(seed: u64) -> medguard_ledger::Entry {
    medguard_ledger::Entry::Inference {
        time: "2026-11-28T12:00:00Z".parse().expect("a valid time"),
        model: "pneumonia-cnn".into(),
        version: semver::Version::new(1, 0, 0),
        model_sha256: medguard_attest::Sha256Digest::of(b"model"),
        guest_sha256: medguard_attest::Sha256Digest::of(b"guest"),
        input_hmac: format!("{:064x}", seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
        verdict: "accept".into(),
        p_value: Some(0.5),
        label: Some("normal".into()),
        policy: "enforce".into(),
        seed,
    }
}
