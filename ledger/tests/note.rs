//! Checkpoints against independent implementations of the C2SP formats:
//! `signed_note` (a port of Go's `golang.org/x/mod/sumdb/note`) verifies
//! our signed notes and signs notes we verify; `tlog_tiles` parses our
//! checkpoint text.

#![allow(clippy::unwrap_used)]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use medguard_ledger::merkle::Hash;
use medguard_ledger::note::{Checkpoint, NoteSigner, NoteVerifier};
use signed_note::{Note, StandardSigner, StandardVerifier, VerifierList};

const NAME: &str = "medguard.invalid/ledger/0123456789abcdef";
const SEED: [u8; 32] = [42; 32];

fn checkpoint() -> Checkpoint {
    Checkpoint {
        origin: NAME.into(),
        size: 1_000_003,
        root: Hash([0xab; 32]),
    }
}

#[test]
fn go_compatible_verifiers_accept_our_checkpoints() {
    let signer = NoteSigner::new(NAME, &SEED);
    let note = signer.sign(&checkpoint());
    let vkey = signer.verifier().to_string();
    let verifiers = VerifierList::new(vec![Box::new(StandardVerifier::new(&vkey).unwrap())]);
    let parsed = Note::from_bytes(note.as_bytes()).unwrap();
    let (verified, _) = parsed.verify(&verifiers).unwrap();
    assert_eq!(verified.len(), 1);
    let cp = tlog_tiles::Checkpoint::from_bytes(parsed.text()).unwrap();
    assert_eq!(cp.origin(), NAME);
    assert_eq!(cp.size(), 1_000_003);
    assert_eq!(cp.hash().0, [0xab; 32]);
}

#[test]
fn we_accept_checkpoints_signed_by_a_go_compatible_signer() {
    let ours = NoteSigner::new(NAME, &SEED).verifier();
    // The same key in the Go tool's private-key encoding.
    let vkey = ours.to_string();
    let id = vkey.split('+').nth(1).unwrap();
    let mut blob = vec![1u8];
    blob.extend_from_slice(&SEED);
    let skey = format!("PRIVATE+KEY+{NAME}+{id}+{}", BASE64.encode(blob));
    let signer = StandardSigner::new(&skey).unwrap();
    let mut note = Note::new(checkpoint().body().as_bytes(), &[]).unwrap();
    note.add_sigs(&[&signer]).unwrap();
    let text = String::from_utf8(note.to_bytes()).unwrap();
    let verifier: NoteVerifier = vkey.parse().unwrap();
    assert_eq!(verifier.open(&text).unwrap(), checkpoint());
}
