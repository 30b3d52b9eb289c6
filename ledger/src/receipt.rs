//! A receipt: everything needed to check, offline and with only the
//! ledger's public key, that an entry is in the ledger.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::entry::Entry;
use crate::merkle::{self, Hash, ProofError};
use crate::note::{Checkpoint, NoteError, NoteVerifier};

/// Proof that one entry is leaf `index` of the tree a signed checkpoint
/// commits to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    /// The entry's exact bytes (JSON text): the leaf hash covers them.
    pub entry: String,
    /// Its leaf index.
    pub index: u64,
    /// The tree size the proof and checkpoint are for.
    pub tree_size: u64,
    /// The audit path, nearest the leaf first, base64 hashes.
    pub inclusion_proof: Vec<String>,
    /// The C2SP signed checkpoint.
    pub checkpoint: String,
}

/// Why a receipt does not check out.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReceiptError {
    /// The checkpoint's signature or format.
    #[error(transparent)]
    Checkpoint(#[from] NoteError),
    /// The receipt's own fields.
    #[error("receipt is malformed: {0}")]
    Malformed(String),
    /// The inclusion proof fails.
    #[error("the entry is not in the signed tree: {0}")]
    Proof(#[from] ProofError),
}

impl Receipt {
    pub(crate) fn new(
        entry: Vec<u8>,
        index: u64,
        tree_size: u64,
        proof: &[Hash],
        checkpoint: String,
    ) -> Self {
        Self {
            // Entries are serde_json output: always UTF-8.
            entry: String::from_utf8_lossy(&entry).into_owned(),
            index,
            tree_size,
            inclusion_proof: proof.iter().map(|h| BASE64.encode(h.0)).collect(),
            checkpoint,
        }
    }

    /// Checks the receipt with only the ledger's public key: the checkpoint's
    /// signature, that it is for `tree_size`, and that the entry's leaf hash
    /// with the proof leads to its root. Returns the checkpoint and the entry.
    pub fn verify(&self, key: &NoteVerifier) -> Result<(Checkpoint, Entry), ReceiptError> {
        let checkpoint = key.open(&self.checkpoint)?;
        if checkpoint.size != self.tree_size {
            return Err(ReceiptError::Malformed(format!(
                "tree size {} but the checkpoint is for {}",
                self.tree_size, checkpoint.size
            )));
        }
        let proof = self
            .inclusion_proof
            .iter()
            .map(|h| {
                BASE64
                    .decode(h)
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .map(Hash)
                    .ok_or_else(|| ReceiptError::Malformed(format!("{h:?} is not a base64 hash")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        merkle::verify_inclusion(
            self.index,
            self.tree_size,
            merkle::leaf_hash(self.entry.as_bytes()),
            &proof,
            checkpoint.root,
        )?;
        let entry: Entry = serde_json::from_str(&self.entry)
            .map_err(|e| ReceiptError::Malformed(format!("entry: {e}")))?;
        Ok((checkpoint, entry))
    }
}
