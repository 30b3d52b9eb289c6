//! The ledger's files as found on disk: record framing of `entries.log` and
//! `checkpoints.log`, the index, the tree files and `view.json`. The first
//! byte picks one file of a real template ledger (fixed key, six entries,
//! three checkpoints) to replace with the remaining bytes; then
//! `medguard_ledger::audit` reads the directory, `Ledger::open` recovers
//! it, and if it opened, one more entry is appended.
//! The framing functions themselves are crate-private; this is the public
//! path to them, and a slow one: every run verifies the template's Ed25519
//! checkpoints and writes a directory (fuzz/README.md).
#![no_main]

use libfuzzer_sys::fuzz_target;
use medguard_fuzz::{LEDGER_FILES, note_verifier, sample_entries, scratch_root, template_ledger};
use medguard_ledger::store::LEDGER_DIR;
use medguard_ledger::{Ledger, audit};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, contents)) = data.split_first() else {
        return;
    };
    let replaced = LEDGER_FILES[selector as usize % LEDGER_FILES.len()];
    let (files, _) = template_ledger();
    let tmp = tempfile::tempdir_in(scratch_root()).expect("scratch directory");
    let dir = tmp.path().join(LEDGER_DIR);
    std::fs::create_dir(&dir).expect("ledger directory");
    for (name, bytes) in files {
        if name != replaced {
            std::fs::write(dir.join(name), bytes).expect("template file");
        }
    }
    std::fs::write(dir.join(replaced), contents).expect("fuzzed file");

    let _ = audit(tmp.path(), note_verifier());
    if let Ok(mut ledger) = Ledger::open(tmp.path()) {
        let _ = ledger.append(&sample_entries()[4..5]);
    }
});
