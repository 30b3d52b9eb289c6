//! The vouched path to an [`AttestedModel`] (`attest`: a manifest the caller
//! vouches for, vendor tools only), the model type itself, and `Pinned`, the
//! guest bytes that match the digest built into the host.

use std::sync::Arc;

use sha2::digest::Update;
use thiserror::Error;

use crate::{Manifest, Sha256Digest};

/// Shared, immutable bytes. A `Vec` behind the `Arc` (not `Arc<[u8]>`), so
/// that a model read into memory is shared without being copied again.
type Bytes = Arc<Vec<u8>>;

/// Bytes whose SHA-256 was checked against an expected digest.
///
/// Fields are private and there is no constructor but [`pin`]: holding a
/// `Pinned` is proof that its bytes hash to [`Pinned::digest`]. The bytes are
/// shared, never re-read, so what was hashed is what runs.
#[derive(Clone)]
pub struct Pinned {
    bytes: Bytes,
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

/// Bytes with the SHA-256 this crate computed over them while they were
/// read: one pass, so a large model is hashed while it is still in the CPU
/// cache. Nothing is claimed about the digest yet; admission compares it.
#[derive(Clone)]
pub struct Hashed {
    bytes: Bytes,
    digest: Sha256Digest,
}

impl Hashed {
    /// Reads at most `cap` bytes from `reader`, hashing as it goes
    /// ([`read_hashing`]). `Ok(None)` means there was more than `cap`.
    pub fn read(
        reader: impl std::io::Read + Send,
        cap: u64,
        size_hint: u64,
    ) -> std::io::Result<Option<Self>> {
        use sha2::Digest;
        let mut hasher = sha2::Sha256::new();
        let Some(bytes) = read_hashing(reader, cap, size_hint, &mut hasher)? else {
            return Ok(None);
        };
        Ok(Some(Self {
            bytes: Arc::new(bytes),
            digest: Sha256Digest::from_bytes(hasher.finalize().into()),
        }))
    }

    /// Bytes already in memory (a browser's fetched file), hashed now.
    pub fn of(bytes: Vec<u8>) -> Self {
        let digest = Sha256Digest::of(&bytes);
        Self {
            bytes: Arc::new(bytes),
            digest,
        }
    }

    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Their SHA-256.
    pub fn digest(&self) -> Sha256Digest {
        self.digest
    }

    pub(crate) fn into_parts(self) -> (Bytes, Sha256Digest) {
        (self.bytes, self.digest)
    }
}

impl std::fmt::Debug for Hashed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Hashed({:?}, {} bytes)", self.digest, self.bytes.len())
    }
}

/// Reads at most `cap` bytes from `reader` into memory, feeding each byte to
/// `hasher` (a digest or a MAC) as it arrives: one pass, so the bytes are
/// hashed while they are still in the CPU cache. `Ok(None)` means there was
/// more than `cap`: the reader is not drained, so an endless stream costs one
/// byte past the cap. `size_hint` (a file's length, say) sizes the buffer;
/// with a hint and a second core, reading and hashing overlap (the kernel's
/// copy into fresh memory costs about as much as SHA-256 itself), otherwise
/// they alternate chunk by chunk.
pub fn read_hashing<H: Update>(
    reader: impl std::io::Read + Send,
    cap: u64,
    size_hint: u64,
    hasher: &mut H,
) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read as _;
    const CHUNK: usize = 8 << 20;
    let mut reader = reader.take(cap.saturating_add(1));
    let hint = usize::try_from(size_hint.min(cap)).unwrap_or(0);
    let parallel = hint > CHUNK && std::thread::available_parallelism().is_ok_and(|n| n.get() > 1);
    let mut bytes = if parallel {
        // Zeroed allocation of this size comes from the OS as untouched
        // pages: no zeroing pass of our own.
        let mut bytes = vec![0u8; hint];
        let filled = read_and_hash_overlapped(&mut reader, &mut bytes, hasher, CHUNK)?;
        bytes.truncate(filled);
        bytes.reserve(CHUNK);
        bytes
    } else {
        // Room for the last, partly filled chunk too: growing a buffer the
        // size of the input would copy all of it.
        Vec::with_capacity(hint.saturating_add(CHUNK))
    };
    // Whatever the hint did not cover (all of it when sequential).
    loop {
        let start = bytes.len();
        // `read_to_end` appends into spare capacity without zeroing it first.
        let n = (&mut reader).take(CHUNK as u64).read_to_end(&mut bytes)?;
        if n == 0 {
            break;
        }
        hasher.update(&bytes[start..]);
    }
    if bytes.len() as u64 > cap {
        return Ok(None);
    }
    Ok(Some(bytes))
}

/// Fills `buf` from `reader` on a scoped thread, chunk by chunk, while this
/// thread hashes each chunk as soon as it is full. Returns how many bytes
/// were read (fewer than `buf.len()` at end of input).
fn read_and_hash_overlapped(
    reader: &mut (impl std::io::Read + Send),
    buf: &mut [u8],
    hasher: &mut impl Update,
    chunk: usize,
) -> std::io::Result<usize> {
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<&[u8]>(2);
        let filler = scope.spawn(move || -> std::io::Result<usize> {
            let mut total = 0;
            for part in buf.chunks_mut(chunk) {
                let n = read_full(reader, part)?;
                total += n;
                let part: &[u8] = part;
                // The hasher only stops early if it panicked; join reports it.
                if tx.send(&part[..n]).is_err() || n < part.len() {
                    break;
                }
            }
            Ok(total)
        });
        for part in rx {
            hasher.update(part);
        }
        filler
            .join()
            .map_err(|_| std::io::Error::other("the reading thread panicked"))?
    })
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(reader: &mut impl std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
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
pub fn pin(bytes: impl Into<Vec<u8>>, expected: Sha256Digest) -> Result<Pinned, DigestMismatch> {
    let bytes = Arc::new(bytes.into());
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
    manifest_digest: Option<Sha256Digest>,
    /// What certifies the model's answers, built once from the manifest's
    /// certification section (for smoothing, the radius of every vote count).
    certifier: Option<medguard_certify::Certifier>,
}

/// Why the manifest itself was trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Provenance {
    /// The caller vouched for the manifest ([`vouch_unsigned`]): a vendor's own
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

    /// What certifies the model's answers, when the manifest asks for
    /// certified predictions.
    pub fn certifier(&self) -> Option<&medguard_certify::Certifier> {
        self.certifier.as_ref()
    }

    /// The radius table, when the manifest certifies by randomized smoothing.
    pub fn radius_table(&self) -> Option<&medguard_certify::RadiusTable> {
        match &self.certifier {
            Some(medguard_certify::Certifier::Smoothing(table)) => Some(table),
            _ => None,
        }
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

    /// SHA-256 of the manifest's canonical JSON encoding (serde_json, fields
    /// in declaration order): equal for two models exactly when their
    /// manifests are equal bit for bit, floats included (`-0.0` is not
    /// `0.0`). `None` for a manifest JSON cannot carry exactly (a
    /// non-finite number, possible only in one built in code), which
    /// therefore has no identity to key anything by.
    pub fn manifest_digest(&self) -> Option<Sha256Digest> {
        self.manifest_digest
    }
}

/// See [`AttestedModel::manifest_digest`].
fn canonical_digest(manifest: &Manifest) -> Option<Sha256Digest> {
    let json = serde_json::to_vec(manifest).ok()?;
    let back: Manifest = serde_json::from_slice(&json).ok()?;
    // Equal values and identical bytes both ways: nothing was lost or
    // conflated (`PartialEq` alone takes -0.0 for 0.0).
    let exact = back == *manifest && serde_json::to_vec(&back).ok()? == json;
    exact.then(|| Sha256Digest::of(&json))
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
    /// The manifest's certification parameters cannot be tabulated (a
    /// manifest built in code, past the parser's validation).
    #[error("manifest certification: {0}")]
    Certification(String),
}

/// Attests `model_bytes` against `manifest`.
///
/// Steps, in order, each refusing on failure:
/// 1. the bytes are not empty;
/// 2. their length equals the manifest's declared size (cheap, and names truncation);
/// 3. their SHA-256 equals the manifest's digest.
///
/// **Unsigned: for vendor tools only** (calibrating or evaluating a model
/// before it is signed). The manifest is taken on the caller's word
/// ([`Provenance::Vouched`]), and the name says so at every call site; a
/// deployment admits signed directories through [`crate::admit_signature`],
/// and the host's guard refuses to run a vouched model.
pub fn vouch_unsigned(
    manifest: Manifest,
    model_bytes: impl Into<Vec<u8>>,
) -> Result<AttestedModel, AttestError> {
    let bytes = Arc::new(model_bytes.into());
    let digest = Sha256Digest::of(&bytes);
    attest_hashed(manifest, bytes, digest, Provenance::Vouched)
}

/// [`vouch_unsigned`] for bytes this crate has just hashed, so that admission hashes
/// the model once. Private to the crate: `digest` must be the bytes' SHA-256.
pub(crate) fn attest_hashed(
    manifest: Manifest,
    bytes: Bytes,
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
    let certifier = match &manifest.certification {
        None => None,
        Some(c) => Some(
            c.certifier(manifest.output.labels.len())
                .map_err(|e| AttestError::Certification(e.to_string()))?,
        ),
    };
    Ok(AttestedModel {
        certifier,
        manifest_digest: canonical_digest(&manifest),
        manifest,
        model,
        provenance,
    })
}
