//! `Entry` JSON, as the ledger reads every entry back (open, audit,
//! receipts), folded into a `View`; and the `View` JSON of `view.json`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use medguard_ledger::{Entry, View};

fuzz_target!(|data: &[u8]| {
    if let Ok(entry) = serde_json::from_slice::<Entry>(data) {
        let _ = (entry.kind(), entry.time());
        let _ = serde_json::to_vec(&entry);
        View::default().apply(&entry);
    }
    let _ = serde_json::from_slice::<View>(data);
});
