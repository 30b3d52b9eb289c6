//! The in-toto statement inside a bundle, which `verify` reads only after
//! the signature verified: resource names and digests, the subject digest,
//! then the file-list comparison. The bytes go straight to the statement
//! reader (`read_statement_for_fuzzing`, compiled only under cargo-fuzz's
//! `--cfg fuzzing`), as signing each input with the demo key first ran at
//! 25 executions per second; `attest_bundle` covers the signature path.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use medguard_attest::Sha256Digest;
use medguard_attest::read_statement_for_fuzzing;

fuzz_target!(|payload: &[u8]| {
    let Ok(signed) = read_statement_for_fuzzing(payload) else {
        return;
    };
    let actual = BTreeMap::from([
        (
            "manifest.json".to_owned(),
            Sha256Digest::from_bytes([1; 32]),
        ),
        ("model.onnx".to_owned(), Sha256Digest::from_bytes([2; 32])),
    ]);
    let _ = signed.check_file_names(actual.keys().map(String::as_str));
    if let Err(mismatch) = signed.check_files(&actual) {
        let _ = mismatch.to_string();
    }
});
