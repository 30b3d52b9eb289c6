//! C2SP signed checkpoints: `NoteVerifier`'s `FromStr` (the ledger's public
//! key as an auditor passes it), `NoteVerifier::open` with a fixed key, and
//! `open` of the fuzzed text signed by that key, which reaches the
//! checkpoint body parser behind the signature check.
#![no_main]

use libfuzzer_sys::fuzz_target;
use medguard_fuzz::{note_verifier, sign_note_text};
use medguard_ledger::NoteVerifier;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(verifier) = text.parse::<NoteVerifier>() {
        let _ = (verifier.name(), verifier.to_string());
        let _ = verifier.open(text);
    }
    let _ = note_verifier().open(text);
    let _ = note_verifier().open(&sign_note_text(text));
});
