//! Checkpoints in the C2SP `tlog-checkpoint` format, signed as C2SP signed
//! notes with Ed25519, so that standard witnesses and verifiers (Go's
//! `sumdb/note`, the transparency-dev tooling) can read them.
//!
//! A checkpoint's text is `<origin>\n<size>\n<base64 root>\n`; the signed
//! note appends a blank line and `— <key name> <base64(key id || sig)>\n`,
//! where the key id is the first 4 bytes of
//! `SHA-256(key name || 0x0A || 0x01 || public key)`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::merkle::Hash;

/// Signature type byte of Ed25519 in signed notes.
const ED25519: u8 = 0x01;

/// The em dash and space that start a signature line.
const SIG_PREFIX: &str = "\u{2014} ";

/// Notes larger than this are refused before parsing.
pub const NOTE_MAX_BYTES: usize = 64 * 1024;

/// A tree head: the log's origin, its size and its root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's unique name, also the key name that signs it.
    pub origin: String,
    /// Number of entries.
    pub size: u64,
    /// RFC 6962 root of those entries.
    pub root: Hash,
}

impl Checkpoint {
    /// The checkpoint text the signature covers.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            BASE64.encode(self.root.0)
        )
    }

    fn parse_body(text: &str) -> Result<Self, NoteError> {
        let bad = |why: &str| NoteError::Malformed(why.to_owned());
        let mut lines = text.split('\n');
        let origin = lines
            .next()
            .filter(|o| !o.is_empty())
            .ok_or_else(|| bad("no origin line"))?;
        let size = lines.next().ok_or_else(|| bad("no size line"))?;
        if size.is_empty() || (size.len() > 1 && size.starts_with('0')) {
            return Err(bad("size is not a canonical decimal"));
        }
        let size: u64 = size
            .parse()
            .map_err(|_| bad("size is not a decimal number"))?;
        let root = lines.next().ok_or_else(|| bad("no root line"))?;
        let root: [u8; 32] = BASE64
            .decode(root)
            .ok()
            .and_then(|r| r.try_into().ok())
            .ok_or_else(|| bad("root is not a base64 SHA-256 hash"))?;
        Ok(Self {
            origin: origin.to_owned(),
            size,
            root: Hash(root),
        })
    }
}

/// Why a note was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NoteError {
    /// Not a signed checkpoint of the expected shape.
    #[error("checkpoint is malformed: {0}")]
    Malformed(String),
    /// No signature line by the verifier's key.
    #[error("checkpoint carries no signature by key {0}")]
    NoSignature(String),
    /// The signature does not verify.
    #[error("checkpoint signature by {0} does not verify")]
    BadSignature(String),
    /// The verifier key string is not valid.
    #[error("ledger public key is malformed: {0}")]
    BadKey(String),
}

fn key_id(name: &str, key: &VerifyingKey) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', ED25519]);
    h.update(key.as_bytes());
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

/// The ledger's Ed25519 signing key and the name it signs under.
pub struct NoteSigner {
    name: String,
    key: SigningKey,
}

impl NoteSigner {
    /// A signer from a 32-byte secret seed.
    pub fn new(name: &str, seed: &[u8; 32]) -> Self {
        Self {
            name: name.to_owned(),
            key: SigningKey::from_bytes(seed),
        }
    }

    /// Its public half.
    pub fn verifier(&self) -> NoteVerifier {
        NoteVerifier {
            name: self.name.clone(),
            key: self.key.verifying_key(),
        }
    }

    /// The signed note of `checkpoint`.
    pub fn sign(&self, checkpoint: &Checkpoint) -> String {
        let body = checkpoint.body();
        let sig = self.key.sign(body.as_bytes());
        let mut blob = key_id(&self.name, &self.key.verifying_key()).to_vec();
        blob.extend_from_slice(&sig.to_bytes());
        format!(
            "{body}\n{SIG_PREFIX}{} {}\n",
            self.name,
            BASE64.encode(blob)
        )
    }
}

/// A public key that checks checkpoints, written as a C2SP verifier key:
/// `<name>+<hex key id>+<base64(0x01 || public key)>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    key: VerifyingKey,
}

impl std::fmt::Display for NoteVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut blob = vec![ED25519];
        blob.extend_from_slice(self.key.as_bytes());
        write!(
            f,
            "{}+{}+{}",
            self.name,
            hex::encode(key_id(&self.name, &self.key)),
            BASE64.encode(blob)
        )
    }
}

impl std::str::FromStr for NoteVerifier {
    type Err = NoteError;

    fn from_str(s: &str) -> Result<Self, NoteError> {
        let bad = |why: &str| NoteError::BadKey(why.to_owned());
        let mut parts = s.trim().splitn(3, '+');
        let (Some(name), Some(id), Some(blob)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("expected <name>+<key id>+<key>"));
        };
        let blob = BASE64.decode(blob).map_err(|_| bad("key is not base64"))?;
        let Some((&ED25519, key)) = blob.split_first() else {
            return Err(bad("not an Ed25519 key"));
        };
        let key: [u8; 32] = key
            .try_into()
            .map_err(|_| bad("Ed25519 keys are 32 bytes"))?;
        let key = VerifyingKey::from_bytes(&key).map_err(|_| bad("not a valid Ed25519 point"))?;
        if name.is_empty() || hex::encode(key_id(name, &key)) != id {
            return Err(bad("key id does not match the name and key"));
        }
        Ok(Self {
            name: name.to_owned(),
            key,
        })
    }
}

impl NoteVerifier {
    /// The key name (the log's origin).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Verifies a signed checkpoint and returns it: the signature line by
    /// this key must verify over the exact text, whose origin must be the
    /// key's name. Lines by other keys (witnesses) are ignored.
    pub fn open(&self, note: &str) -> Result<Checkpoint, NoteError> {
        let bad = |why: &str| NoteError::Malformed(why.to_owned());
        if note.len() > NOTE_MAX_BYTES {
            return Err(bad("larger than the size limit"));
        }
        if note.bytes().any(|b| b < 0x20 && b != b'\n') {
            return Err(bad("contains control characters"));
        }
        let split = note
            .rfind("\n\n")
            .ok_or_else(|| bad("no blank line before signatures"))?;
        let (text, sigs) = (&note[..split + 1], &note[split + 2..]);
        if !sigs.ends_with('\n') {
            return Err(bad("signature lines must end with a newline"));
        }
        let id = key_id(&self.name, &self.key);
        let mut found = false;
        for line in sigs[..sigs.len() - 1].split('\n') {
            let rest = line
                .strip_prefix(SIG_PREFIX)
                .ok_or_else(|| bad("malformed signature line"))?;
            let (name, blob) = rest
                .split_once(' ')
                .ok_or_else(|| bad("malformed signature line"))?;
            let blob = BASE64
                .decode(blob)
                .map_err(|_| bad("signature is not base64"))?;
            if name != self.name || blob.len() < 4 || blob[..4] != id {
                continue;
            }
            let sig = ed25519_dalek::Signature::from_slice(&blob[4..])
                .map_err(|_| NoteError::BadSignature(self.name.clone()))?;
            self.key
                .verify_strict(text.as_bytes(), &sig)
                .map_err(|_| NoteError::BadSignature(self.name.clone()))?;
            found = true;
            break;
        }
        if !found {
            return Err(NoteError::NoSignature(self.name.clone()));
        }
        let checkpoint = Checkpoint::parse_body(text)?;
        if checkpoint.origin != self.name {
            return Err(bad("origin differs from the signing key's name"));
        }
        Ok(checkpoint)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn notes_round_trip_and_every_edit_is_caught() {
        let signer = NoteSigner::new("medguard.example/ledger", &[7; 32]);
        let verifier: NoteVerifier = signer.verifier().to_string().parse().unwrap();
        let cp = Checkpoint {
            origin: "medguard.example/ledger".into(),
            size: 42,
            root: Hash([9; 32]),
        };
        let note = signer.sign(&cp);
        assert!(note.starts_with("medguard.example/ledger\n42\n"));
        assert_eq!(verifier.open(&note).unwrap(), cp);
        let edited = note.replacen("\n42\n", "\n43\n", 1);
        assert!(matches!(
            verifier.open(&edited),
            Err(NoteError::BadSignature(_))
        ));
        let other = NoteSigner::new("medguard.example/ledger", &[8; 32]).verifier();
        assert!(matches!(other.open(&note), Err(NoteError::NoSignature(_))));
        assert!("nonsense".parse::<NoteVerifier>().is_err());
    }
}
