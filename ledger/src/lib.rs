//! medguard's audit ledger: a tamper-evident, append-only log in the form of
//! Certificate Transparency (RFC 6962 / RFC 9162) and Sigstore's Rekor,
//! embedded in the deployment.
//!
//! - [`merkle`]: RFC 6962 hashing, inclusion and consistency proofs;
//! - [`note`]: C2SP checkpoints signed as C2SP signed notes (Ed25519);
//! - [`entry`]: what is recorded, and nothing that could identify a patient;
//! - [`store`]: the files, group commit, crash recovery;
//! - [`receipt`]: the offline proof that comes with every prediction;
//! - [`view`]: rollback high-water marks and the policy in force, derived
//!   from the entries;
//! - [`audit`]: the full check that finds the first edited, deleted,
//!   reordered or truncated entry.

// Without the store, the writers' halves (receipt and view construction,
// the input key) have no caller.
#![cfg_attr(not(feature = "store"), allow(dead_code))]

#[cfg(feature = "store")]
pub mod audit;
pub mod entry;
pub mod line;
pub mod merkle;
pub mod note;
pub mod receipt;
pub mod result;
#[cfg(feature = "store")]
pub mod store;
pub mod text;
pub mod view;

#[cfg(feature = "store")]
pub use audit::{AuditReport, audit, audit_against};
pub use entry::Entry;
pub use line::{CheckedLine, LINE_MAX_BYTES, LineError, check_line};
pub use note::{Checkpoint, NoteVerifier};
pub use receipt::{Receipt, ReceiptError};
#[cfg(feature = "store")]
pub use store::{GroupCommit, Ledger, LedgerError};
pub use view::View;
