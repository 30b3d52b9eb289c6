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
        verdict: medguard_ledger::entry::Verdict::Accept,
        p_value: Some(0.5),
        label: Some("normal".into()),
        probabilities: Some([("normal".into(), 0.75), ("pneumonia".into(), 0.25)].into()),
        policy: medguard_ledger::entry::ScreeningPolicy::Enforce,
        seed,
        caller: None,
        certificate: None,
    }
}

/// Where each `u32 length, u32 CRC, payload` record of a ledger file starts.
#[allow(dead_code)]
pub fn record_starts(bytes: &[u8]) -> Vec<usize> {
    let mut at = 0;
    let mut starts = Vec::new();
    while at + 8 <= bytes.len() {
        starts.push(at);
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        at += 8 + len;
    }
    starts
}
