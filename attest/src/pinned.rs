use std::sync::Arc;

use thiserror::Error;

use crate::{Manifest, Sha256Digest};

/// Bytes whose SHA-256 was checked against an expected digest.
///
/// Fields are private and there is no constructor but [`pin`]: holding a
/// `Pinned` is proof that its bytes hash to [`Pinned::digest`]. The bytes are
/// shared, never re-read, so what was hashed is what runs.
#[derive(Clone)]
pub struct Pinned {
    bytes: Arc<[u8]>,
    digest: Sha256Digest,
}

impl Pinned {
    /// The verified bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Their SHA-256, equal to the digest they were pinned to.
    pub fn digest(&self) -> Sha256Digest {
        self.digest
    }
}

impl std::fmt::Debug for Pinned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pinned({:?}, {} bytes)", self.digest, self.bytes.len())
    }
}

/// The bytes did not hash to the digest they were expected to.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("SHA-256 mismatch: expected {expected}, actual {actual}")]
pub struct DigestMismatch {
    /// The digest the caller trusted.
    pub expected: Sha256Digest,
    /// The digest of the bytes that were offered.
    pub actual: Sha256Digest,
}

/// Hashes `bytes` and keeps them only if they match `expected`.
pub fn pin(bytes: impl Into<Arc<[u8]>>, expected: Sha256Digest) -> Result<Pinned, DigestMismatch> {
    let bytes = bytes.into();
    let actual = Sha256Digest::of(&bytes);
    if actual != expected {
        return Err(DigestMismatch { expected, actual });
    }
    Ok(Pinned {
        bytes,
        digest: actual,
    })
}

/// A model whose bytes match its manifest. The sandbox loads nothing else.
#[derive(Debug, Clone)]
pub struct AttestedModel {
    manifest: Manifest,
    model: Pinned,
    provenance: Provenance,
}

/// Why the manifest itself was trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Provenance {
    /// The caller vouched for the manifest ([`attest`]): a vendor's own
    /// working copy, or a digest pinned by the embedding application.
    Vouched,
    /// A key of the trust policy signed the whole directory and the policy
    /// admitted the manifest ([`crate::admit_signature`] and its stages).
    Signed {
        /// The key that signed.
        signer: Signer,
        /// SHA-256 of the signed manifest file.
        manifest_sha256: Sha256Digest,
    },
}

/// A signing key as the trust policy names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    /// The policy's name for the key.
    pub name: String,
    /// SHA-256 of its public key PEM.
    pub fingerprint: Sha256Digest,
}

impl AttestedModel {
    /// The manifest the model was attested against.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The attested model bytes: the very bytes that were hashed.
    pub fn model_bytes(&self) -> &[u8] {
        self.model.bytes()
    }

    /// SHA-256 of the model bytes.
    pub fn model_digest(&self) -> Sha256Digest {
        self.model.digest()
    }

    /// Why the manifest was trusted.
    pub fn provenance(&self) -> &Provenance {
        &self.provenance
    }
}

/// Why a model was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AttestError {
    /// The model file is empty.
    #[error("model file is empty; the manifest expects {expected} bytes")]
    Empty {
        /// Size the manifest declares.
        expected: u64,
    },
    /// The model's size differs from the manifest (truncated or padded).
    #[error("model file is {actual} bytes but the manifest says {expected}: truncated or replaced")]
    SizeMismatch {
        /// Size the manifest declares.
        expected: u64,
        /// Size of the bytes offered.
        actual: u64,
    },
    /// The model's digest differs from the manifest.
    #[error("model file does not match its manifest: {0}")]
    Digest(#[from] DigestMismatch),
}

/// Attests `model_bytes` against `manifest`.
///
/// Steps, in order, each refusing on failure:
/// 1. the bytes are not empty;
/// 2. their length equals the manifest's declared size (cheap, and names truncation);
/// 3. their SHA-256 equals the manifest's digest.
///
/// The manifest is taken on the caller's word ([`Provenance::Vouched`]); a
/// deployment admits signed directories through [`crate::admit_signature`].
pub fn attest(
    manifest: Manifest,
    model_bytes: impl Into<Arc<[u8]>>,
) -> Result<AttestedModel, AttestError> {
    let bytes: Arc<[u8]> = model_bytes.into();
    let digest = Sha256Digest::of(&bytes);
    attest_hashed(manifest, bytes, digest, Provenance::Vouched)
}

/// [`attest`] for bytes this crate has just hashed, so that admission hashes
/// the model once. Private to the crate: `digest` must be the bytes' SHA-256.
pub(crate) fn attest_hashed(
    manifest: Manifest,
    bytes: Arc<[u8]>,
    digest: Sha256Digest,
    provenance: Provenance,
) -> Result<AttestedModel, AttestError> {
    let expected = manifest.model.size;
    // 1.
    if bytes.is_empty() {
        return Err(AttestError::Empty { expected });
    }
    // 2.
    let actual = bytes.len() as u64;
    if actual != expected {
        return Err(AttestError::SizeMismatch { expected, actual });
    }
    // 3.
    if digest != manifest.model.sha256 {
        return Err(DigestMismatch {
            expected: manifest.model.sha256,
            actual: digest,
        }
        .into());
    }
    let model = Pinned { bytes, digest };
    Ok(AttestedModel {
        manifest,
        model,
        provenance,
    })
}
