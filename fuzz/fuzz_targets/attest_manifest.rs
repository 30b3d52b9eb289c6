//! `Manifest::parse`: the model manifest, JSON with a size cap and strict
//! validation (including the screening profile it embeds).
#![no_main]

use libfuzzer_sys::fuzz_target;
use medguard_attest::Manifest;

fuzz_target!(|data: &[u8]| {
    if let Ok(manifest) = Manifest::parse(data) {
        // What was accepted must serialise; the host re-reads it that way.
        if let Ok(bytes) = serde_json::to_vec(&manifest) {
            let _ = Manifest::parse(&bytes);
        }
    }
});
