//! `CheckedBundle::parse` on a model-signing bundle (`model.sig`), then
//! `verify` against a fixed P-256 and a fixed P-384 key: key hint, DER
//! signature decoding and ECDSA verification run on every parsed bundle.
#![no_main]

use libfuzzer_sys::fuzz_target;
use medguard_attest::{CheckedBundle, verify};
use medguard_fuzz::verifying_keys;

fuzz_target!(|data: &[u8]| {
    let Ok(bundle) = CheckedBundle::parse(data) else {
        return;
    };
    let _ = bundle.key_hint();
    for key in verifying_keys() {
        let _ = verify(&bundle, key);
    }
});
