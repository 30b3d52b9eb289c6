//! `Receipt` JSON and `Receipt::verify` with a fixed ledger key; then the
//! same receipt with its checkpoint text re-signed by that key, so that the
//! tree-size check, the proof decoding, the inclusion proof and the entry
//! parser behind the signature are reached too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use medguard_fuzz::{note_verifier, sign_note_text};
use medguard_ledger::Receipt;

fuzz_target!(|data: &[u8]| {
    let Ok(mut receipt) = serde_json::from_slice::<Receipt>(data) else {
        return;
    };
    let _ = receipt.verify(note_verifier());
    let body = match receipt.checkpoint.rfind("\n\n") {
        Some(split) => &receipt.checkpoint[..split + 1],
        None => &receipt.checkpoint[..],
    };
    receipt.checkpoint = sign_note_text(body);
    let _ = receipt.verify(note_verifier());
});
