//! PEM key parsing: `VerifyingKey::from_pem` (policy keys, P-256/P-384
//! SubjectPublicKeyInfo) and `SigningKey::from_pem` (PKCS#8), plus the
//! hex digest parser (`Sha256Digest::from_str`, revoked-key fingerprints).
#![no_main]

use libfuzzer_sys::fuzz_target;
use medguard_attest::{Sha256Digest, SigningKey, VerifyingKey};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(key) = VerifyingKey::from_pem(text) {
        let _ = key.fingerprint();
    }
    if let Ok(key) = SigningKey::from_pem(text) {
        let _ = key.verifying_key().fingerprint();
    }
    let _ = text.parse::<Sha256Digest>();
});
