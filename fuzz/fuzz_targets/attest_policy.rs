//! `TrustPolicy::parse` on the trust policy TOML, with a key-file reader
//! that returns a fixed PEM for any file name (the P-384 fixture for names
//! containing "384", the demo key otherwise); then the key lookup and the
//! model rules of whatever policy was accepted.
#![no_main]

use libfuzzer_sys::fuzz_target;
use medguard_attest::{HighWater, Sha256Digest, TrustPolicy};
use medguard_fuzz::{DEMO_PUB_PEM, P384_PUB_PEM, verifying_keys};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let read_key_file = |name: &str| {
        Ok(if name.contains("384") {
            P384_PUB_PEM
        } else {
            DEMO_PUB_PEM
        }
        .to_owned())
    };
    let Ok(policy) = TrustPolicy::parse(text, read_key_file) else {
        return;
    };
    let _ = policy.candidate_keys(None);
    let now = "2026-12-01T00:00:00Z".parse().expect("time");
    let high_water = HighWater {
        version: "1.0.0".parse().expect("version"),
        manifest_sha256: Sha256Digest::from_bytes([3; 32]),
    };
    for key in verifying_keys() {
        let hint = key.fingerprint().to_string();
        let Ok(candidates) = policy.candidate_keys(Some(&hint)) else {
            continue;
        };
        for signer in candidates {
            let digest = Sha256Digest::from_bytes([4; 32]);
            let _ =
                policy.check_manifest(signer, medguard_fuzz::bundled_manifest(), digest, None, now);
            let _ = policy.check_manifest(
                signer,
                medguard_fuzz::bundled_manifest(),
                digest,
                Some(&high_water),
                now,
            );
        }
    }
});
