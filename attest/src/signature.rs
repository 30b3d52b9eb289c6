//! Verification of OpenSSF model-signing bundles (`model_signing sign key`,
//! v1.x): a Sigstore bundle v0.3 holding a DSSE envelope whose payload is an
//! in-toto Statement v1 listing every file of the model directory.
//!
//! The order follows "structure before crypto": [`CheckedBundle::parse`]
//! refuses anything but exactly one signature by a public key over an in-toto
//! payload before any signature is checked; [`verify`] then checks the key
//! hint, the ECDSA signature over the DSSE pre-authentication encoding of the
//! exact payload bytes (never re-serialised), and only then reads the
//! payload. The result, a [`SignedDirectory`], says which files with which
//! digests the key signed; [`SignedDirectory::check_files`] compares that with
//! the directory on disk and names every extra, missing or changed file.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use p256::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePublicKey, LineEnding};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::Sha256Digest;

/// The Sigstore bundle media type `model_signing` 1.x writes.
const BUNDLE_MEDIA_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
/// The DSSE payload type of an in-toto statement.
const IN_TOTO_PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
const PREDICATE_TYPE: &str = "https://model_signing/signature/v1.0";
/// Bundles are small; anything larger is refused before parsing.
pub const BUNDLE_MAX_BYTES: usize = 4 * 1024 * 1024;

/// Why a signature bundle was refused.
#[derive(Debug, Error, PartialEq)]
pub enum SignatureError {
    /// Not a bundle of the expected shape (checked before any crypto).
    #[error("signature bundle is malformed: {0}")]
    Malformed(String),
    /// A well-formed bundle of a kind this build does not verify.
    #[error("signature bundle is not supported: {0}")]
    Unsupported(String),
    /// The trusted key could not be read.
    #[error("public key is not usable: {0}")]
    Key(String),
    /// The bundle names a different key than the one it is checked against.
    #[error("the bundle was made with another key (hint {hint}, key {key})")]
    KeyMismatch {
        /// The key hint in the bundle.
        hint: String,
        /// The fingerprint of the key it was checked against.
        key: Sha256Digest,
    },
    /// The signature does not verify over the payload with this key.
    #[error("signature does not verify with the given key")]
    BadSignature,
    /// The signed payload is not a model-signing statement this build reads.
    #[error("signed statement is not valid: {0}")]
    Statement(String),
}

/// A bundle whose structure was checked: one signature by a public key over
/// an in-toto payload. Nothing in it is trusted yet.
#[derive(Debug, Clone)]
pub struct CheckedBundle {
    payload: Vec<u8>,
    signature: Vec<u8>,
    key_hint: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawBundle {
    media_type: String,
    verification_material: RawMaterial,
    dsse_envelope: Option<RawEnvelope>,
    message_signature: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawMaterial {
    public_key: Option<RawKeyId>,
    certificate: Option<serde_json::Value>,
    x509_certificate_chain: Option<serde_json::Value>,
    // Transparency-log entries and timestamps are accepted and not
    // interpreted: a keyed bundle's trust rests on the key alone.
    #[serde(rename = "tlogEntries", default)]
    _tlog_entries: Vec<serde::de::IgnoredAny>,
    #[serde(rename = "timestampVerificationData")]
    _timestamp_verification_data: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeyId {
    hint: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawEnvelope {
    payload: String,
    payload_type: String,
    signatures: Vec<RawSignature>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSignature {
    sig: String,
    // `model_signing` writes an empty key id; the key is named by the hint.
    #[serde(rename = "keyid", default)]
    _keyid: String,
}

impl CheckedBundle {
    /// The key hint the signer wrote (`model_signing` writes the key's
    /// [`VerifyingKey::fingerprint`]); untrusted until the signature verifies.
    pub fn key_hint(&self) -> Option<&str> {
        self.key_hint.as_deref()
    }

    /// Parses a bundle and checks its structure:
    /// 1. at most [`BUNDLE_MAX_BYTES`], JSON of the bundle's shape;
    /// 2. media type Sigstore bundle v0.3;
    /// 3. key material is a public key (keyless certificate bundles are
    ///    refused for now);
    /// 4. a DSSE envelope (not a bare message signature) with an in-toto
    ///    payload type and exactly one signature;
    /// 5. payload and signature are valid base64.
    pub fn parse(bytes: &[u8]) -> Result<Self, SignatureError> {
        let malformed = |why: String| SignatureError::Malformed(why);
        if bytes.len() > BUNDLE_MAX_BYTES {
            return Err(malformed(format!(
                "{} bytes, more than the {BUNDLE_MAX_BYTES}-byte limit",
                bytes.len()
            )));
        }
        let raw: RawBundle =
            serde_json::from_slice(bytes).map_err(|e| malformed(format!("not a bundle: {e}")))?;
        if raw.media_type != BUNDLE_MEDIA_TYPE {
            return Err(SignatureError::Unsupported(format!(
                "media type {:?}; expected {BUNDLE_MEDIA_TYPE:?}",
                raw.media_type
            )));
        }
        let material = raw.verification_material;
        if material.certificate.is_some() || material.x509_certificate_chain.is_some() {
            return Err(SignatureError::Unsupported(
                "keyless (certificate) bundles are not verified yet; sign with a key (`model_signing sign key`)".into(),
            ));
        }
        let key = material
            .public_key
            .ok_or_else(|| malformed("verification material names no public key".into()))?;
        let envelope = match (raw.dsse_envelope, raw.message_signature) {
            (Some(e), None) => e,
            _ => {
                return Err(malformed(
                    "expected exactly a DSSE envelope and no message signature".into(),
                ));
            }
        };
        if envelope.payload_type != IN_TOTO_PAYLOAD_TYPE {
            return Err(malformed(format!(
                "payload type {:?}; expected {IN_TOTO_PAYLOAD_TYPE:?}",
                envelope.payload_type
            )));
        }
        let [signature] = envelope.signatures.as_slice() else {
            return Err(malformed(format!(
                "{} signatures; exactly one is accepted",
                envelope.signatures.len()
            )));
        };
        let payload = BASE64
            .decode(&envelope.payload)
            .map_err(|e| malformed(format!("payload is not base64: {e}")))?;
        let sig = BASE64
            .decode(&signature.sig)
            .map_err(|e| malformed(format!("signature is not base64: {e}")))?;
        Ok(Self {
            payload,
            signature: sig,
            key_hint: key.hint.filter(|h| !h.is_empty()),
        })
    }
}

/// A public key trusted to sign models: ECDSA on P-256 (SHA-256) or P-384
/// (SHA-384), as `model_signing` pairs curve and hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyingKey {
    /// ECDSA P-256 with SHA-256.
    P256(p256::ecdsa::VerifyingKey),
    /// ECDSA P-384 with SHA-384.
    P384(p384::ecdsa::VerifyingKey),
}

impl VerifyingKey {
    /// Reads a PEM `PUBLIC KEY` (SubjectPublicKeyInfo) on P-256 or P-384.
    pub fn from_pem(pem: &str) -> Result<Self, SignatureError> {
        if let Ok(k) = p256::PublicKey::from_public_key_pem(pem) {
            return Ok(Self::P256(k.into()));
        }
        if let Ok(k) = p384::PublicKey::from_public_key_pem(pem) {
            return Ok(Self::P384(k.into()));
        }
        Err(SignatureError::Key(
            "expected a PEM public key (SubjectPublicKeyInfo) on P-256 or P-384".into(),
        ))
    }

    /// SHA-256 of the key's PEM encoding: the `hint` `model_signing` writes
    /// into its bundles, and the name a trust policy can use for the key.
    pub fn fingerprint(&self) -> Sha256Digest {
        let pem = match self {
            Self::P256(k) => p256::PublicKey::from(k).to_public_key_pem(LineEnding::LF),
            Self::P384(k) => p384::PublicKey::from(k).to_public_key_pem(LineEnding::LF),
        };
        // Encoding a valid curve point cannot fail; an empty string would
        // only yield a fingerprint that matches no hint.
        Sha256Digest::of(pem.unwrap_or_default().as_bytes())
    }

    fn verify(&self, message: &[u8], der: &[u8]) -> Result<(), SignatureError> {
        use p256::ecdsa::signature::Verifier;
        let ok =
            match self {
                Self::P256(k) => p256::ecdsa::Signature::from_der(der)
                    .is_ok_and(|s| k.verify(message, &s).is_ok()),
                Self::P384(k) => p384::ecdsa::Signature::from_der(der)
                    .is_ok_and(|s| k.verify(message, &s).is_ok()),
            };
        if ok {
            Ok(())
        } else {
            Err(SignatureError::BadSignature)
        }
    }
}

/// The statement's subject digest: SHA-256 over the file digests in path
/// order, as `model_signing` computes it.
fn subject_digest(files: &BTreeMap<String, Sha256Digest>) -> Sha256Digest {
    let mut hasher = Sha256::new();
    for digest in files.values() {
        hasher.update(digest.as_bytes());
    }
    Sha256Digest::from_bytes(hasher.finalize().into())
}

/// The DSSE v1 pre-authentication encoding of an in-toto payload: what the
/// signature covers.
fn pae(payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {IN_TOTO_PAYLOAD_TYPE} {} ",
        IN_TOTO_PAYLOAD_TYPE.len(),
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Statement {
    #[serde(rename = "_type")]
    statement_type: String,
    subject: Vec<Subject>,
    #[serde(rename = "predicateType")]
    predicate_type: String,
    predicate: Predicate,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Subject {
    name: String,
    digest: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Predicate {
    resources: Vec<Resource>,
    serialization: Serialization,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Resource {
    digest: String,
    name: String,
    algorithm: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Serialization {
    method: String,
    hash_type: String,
    allow_symlinks: bool,
    #[serde(default)]
    ignore_paths: Vec<String>,
}

/// What a trusted key signed: the files of a model directory and their
/// digests. Only [`verify`] builds one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedDirectory {
    name: String,
    files: BTreeMap<String, Sha256Digest>,
    ignored: Vec<String>,
    key: Sha256Digest,
}

impl SignedDirectory {
    /// The subject name (the directory's name when it was signed).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Signed files by relative path (`/`-separated) with their digests.
    pub fn files(&self) -> &BTreeMap<String, Sha256Digest> {
        &self.files
    }

    /// Paths the signer excluded (the signature file itself among them), sorted.
    pub fn ignored(&self) -> &[String] {
        &self.ignored
    }

    /// Fingerprint of the key that signed.
    pub fn key(&self) -> Sha256Digest {
        self.key
    }

    /// Compares only the names of the directory's files with the signed
    /// ones, so that an extra or missing file is refused before anything is
    /// hashed (an extra file may be endless).
    pub fn check_file_names<'a>(
        &self,
        actual: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), FilesMismatch> {
        let actual: std::collections::BTreeSet<&str> = actual.into_iter().collect();
        let missing: Vec<String> = self
            .files
            .keys()
            .filter(|f| !actual.contains(f.as_str()))
            .cloned()
            .collect();
        let extra: Vec<String> = actual
            .into_iter()
            .filter(|f| !self.files.contains_key(*f))
            .map(str::to_owned)
            .collect();
        if missing.is_empty() && extra.is_empty() {
            Ok(())
        } else {
            Err(FilesMismatch {
                missing,
                extra,
                changed: Vec::new(),
            })
        }
    }

    /// Compares the signed file list with the directory's actual files and
    /// digests, naming every extra, missing and changed file.
    pub fn check_files(
        &self,
        actual: &BTreeMap<String, Sha256Digest>,
    ) -> Result<(), FilesMismatch> {
        let (missing, extra) = match self.check_file_names(actual.keys().map(String::as_str)) {
            Ok(()) => (Vec::new(), Vec::new()),
            Err(m) => (m.missing, m.extra),
        };
        let changed: Vec<ChangedFile> = self
            .files
            .iter()
            .filter_map(|(f, &expected)| {
                let &found = actual.get(f)?;
                (found != expected).then(|| ChangedFile {
                    file: f.clone(),
                    expected,
                    actual: found,
                })
            })
            .collect();
        if missing.is_empty() && extra.is_empty() && changed.is_empty() {
            Ok(())
        } else {
            Err(FilesMismatch {
                missing,
                extra,
                changed,
            })
        }
    }
}

/// A file whose digest differs from the signed one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangedFile {
    /// Relative path.
    pub file: String,
    /// The signed digest.
    pub expected: Sha256Digest,
    /// The digest on disk.
    pub actual: Sha256Digest,
}

/// How a directory differs from what was signed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{}", describe(self))]
pub struct FilesMismatch {
    /// Signed but not present.
    pub missing: Vec<String>,
    /// Present but not signed.
    pub extra: Vec<String>,
    /// Present with another digest.
    pub changed: Vec<ChangedFile>,
}

fn describe(m: &FilesMismatch) -> String {
    let mut parts: Vec<String> = Vec::new();
    parts.extend(m.changed.iter().map(|c| {
        format!(
            "hash mismatch for {}: expected {}, actual {}",
            c.file, c.expected, c.actual
        )
    }));
    parts.extend(
        m.missing
            .iter()
            .map(|f| format!("signed file {f} is missing")),
    );
    parts.extend(
        m.extra
            .iter()
            .map(|f| format!("file {f} is not covered by the signature")),
    );
    // The full lists are in the fields; a message naming hundreds of files
    // helps no one and would not fit a ledger entry.
    const SHOWN: usize = 8;
    let more = parts.len().saturating_sub(SHOWN);
    parts.truncate(SHOWN);
    if more > 0 {
        parts.push(format!("and {more} more differences"));
    }
    parts.join("; ")
}

/// Verifies a checked bundle against a trusted key:
/// 1. the bundle's key hint, if any, names this key;
/// 2. the ECDSA signature verifies over the DSSE PAE of the exact payload bytes;
/// 3. only then, the payload is read: an in-toto Statement v1 with the
///    model-signing predicate, one subject, `files` serialization with SHA-256;
/// 4. resource names are unique relative paths, digests are SHA-256;
/// 5. the subject digest equals SHA-256 over the resource digests in name order.
pub fn verify(
    bundle: &CheckedBundle,
    key: &VerifyingKey,
) -> Result<SignedDirectory, SignatureError> {
    let fingerprint = key.fingerprint();
    if let Some(hint) = &bundle.key_hint
        && *hint != fingerprint.to_string()
    {
        return Err(SignatureError::KeyMismatch {
            hint: hint.clone(),
            key: fingerprint,
        });
    }
    key.verify(&pae(&bundle.payload), &bundle.signature)?;
    read_statement(&bundle.payload, fingerprint)
}

/// The in-toto statement of a bundle whose signature verified, for the
/// fuzz target `attest_statement`, which would otherwise spend nearly all
/// its time in ECDSA signing and verification. Only in fuzz builds.
#[cfg(fuzzing)]
pub fn read_statement_for_fuzzing(payload: &[u8]) -> Result<SignedDirectory, SignatureError> {
    read_statement(payload, Sha256Digest::from_bytes([0; 32]))
}

/// Reads the statement signed by the key with `fingerprint`: the
/// statement and predicate types, the serialization, one subject whose
/// digest covers the resources, and resources with relative paths.
fn read_statement(
    payload: &[u8],
    fingerprint: Sha256Digest,
) -> Result<SignedDirectory, SignatureError> {
    let bad = |why: String| SignatureError::Statement(why);
    let statement: Statement = serde_json::from_slice(payload)
        .map_err(|e| bad(format!("not an in-toto statement: {e}")))?;
    if statement.statement_type != STATEMENT_TYPE || statement.predicate_type != PREDICATE_TYPE {
        return Err(bad(format!(
            "statement {:?} with predicate {:?}; expected {STATEMENT_TYPE:?} with {PREDICATE_TYPE:?}",
            statement.statement_type, statement.predicate_type
        )));
    }
    let s = &statement.predicate.serialization;
    if s.method != "files" || s.hash_type != "sha256" || s.allow_symlinks {
        return Err(bad(format!(
            "serialization {:?} with {:?}{}; only per-file SHA-256 without symlinks is supported",
            s.method,
            s.hash_type,
            if s.allow_symlinks {
                " following symlinks"
            } else {
                ""
            }
        )));
    }
    let [subject] = statement.subject.as_slice() else {
        return Err(bad(format!(
            "{} subjects; exactly one is expected",
            statement.subject.len()
        )));
    };
    let mut files = BTreeMap::new();
    for r in &statement.predicate.resources {
        let path_ok = !r.name.is_empty()
            && !r.name.starts_with('/')
            && !r.name.contains('\\')
            && r.name
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != "..");
        if !path_ok {
            return Err(bad(format!(
                "resource name {:?} is not a relative path",
                r.name
            )));
        }
        if r.algorithm != "sha256" {
            return Err(bad(format!(
                "{}: digest algorithm {:?}",
                r.name, r.algorithm
            )));
        }
        let digest: Sha256Digest = r
            .digest
            .parse()
            .map_err(|e| bad(format!("{}: {e}", r.name)))?;
        if files.insert(r.name.clone(), digest).is_some() {
            return Err(bad(format!("resource {} is listed twice", r.name)));
        }
    }
    let expected = subject_digest(&files);
    let claimed = subject
        .digest
        .get("sha256")
        .ok_or_else(|| bad("subject has no sha256 digest".into()))?;
    if *claimed != expected.to_string() {
        return Err(bad(format!(
            "subject digest {claimed} does not match the resources ({expected})"
        )));
    }
    // The tool writes its ignore list in set order; keep it sorted.
    let mut ignored = s.ignore_paths.clone();
    ignored.sort();
    Ok(SignedDirectory {
        name: subject.name.clone(),
        files,
        ignored,
        key: fingerprint,
    })
}

/// A private key that signs model directories, on P-256 or P-384.
pub enum SigningKey {
    /// ECDSA P-256 with SHA-256.
    P256(p256::ecdsa::SigningKey),
    /// ECDSA P-384 with SHA-384.
    P384(p384::ecdsa::SigningKey),
}

/// Why a private key cannot be read for signing.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PrivateKeyError {
    /// The key is protected by a passphrase; medguard asks for none.
    #[error(
        "private key is encrypted ({format}); decrypt it first, e.g. `openssl pkey -in KEY -out KEY.dec`, and keep the decrypted copy as protected as the original"
    )]
    Encrypted {
        /// Which encrypted encoding: PKCS#8 or legacy SEC1 with PEM headers.
        format: &'static str,
    },
    /// Not a private key in a format and on a curve this build reads.
    #[error(
        "private key is not usable: {0}; expected an unencrypted PEM ECDSA key on P-256 or P-384, SEC1 (BEGIN EC PRIVATE KEY, as `openssl ecparam -genkey` writes) or PKCS#8 (BEGIN PRIVATE KEY, as `openssl genpkey` writes)"
    )]
    Unsupported(String),
}

/// The PEM blocks of a text, each as its label and its text from the BEGIN
/// line through the END line. Text around the blocks is skipped.
fn pem_blocks(text: &str) -> Vec<(&str, &str)> {
    fn boundary<'a>(line: &'a str, kind: &str) -> Option<&'a str> {
        line.trim_end()
            .strip_prefix("-----")?
            .strip_prefix(kind)?
            .strip_prefix(' ')?
            .strip_suffix("-----")
    }
    let mut blocks = Vec::new();
    let mut open: Option<(&str, usize)> = None;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        if let Some(label) = boundary(line, "BEGIN") {
            open = Some((label, start));
        } else if let Some(label) = boundary(line, "END")
            && let Some((begun, start)) = open.take()
            && begun == label
        {
            blocks.push((label, &text[start..offset]));
        }
    }
    blocks
}

impl SigningKey {
    /// Reads a PEM ECDSA private key on P-256 or P-384, unencrypted, as
    /// SEC1 (`BEGIN EC PRIVATE KEY`: what `openssl ecparam -genkey`, and so
    /// `model_signing`'s instructions, produce; an `EC PARAMETERS` block
    /// before it is skipped) or as PKCS#8 (`BEGIN PRIVATE KEY`: `openssl
    /// genpkey`, Python's `cryptography`). An encrypted key is refused with
    /// the advice to decrypt it.
    pub fn from_pem(pem: &str) -> Result<Self, PrivateKeyError> {
        let unsupported = |why: String| PrivateKeyError::Unsupported(why);
        let blocks: Vec<(&str, &str)> = pem_blocks(pem)
            .into_iter()
            .filter(|(label, _)| *label != "EC PARAMETERS")
            .collect();
        let [(label, block)] = blocks.as_slice() else {
            return Err(unsupported(match blocks.len() {
                0 => "no PEM block found".into(),
                n => format!("{n} PEM blocks where one key was expected"),
            }));
        };
        match *label {
            "PRIVATE KEY" => {
                if let Ok(k) = p256::SecretKey::from_pkcs8_pem(block) {
                    return Ok(Self::P256(k.into()));
                }
                if let Ok(k) = p384::SecretKey::from_pkcs8_pem(block) {
                    return Ok(Self::P384(k.into()));
                }
                Err(unsupported(
                    "a PKCS#8 key that is not an EC key on P-256 or P-384, or is damaged".into(),
                ))
            }
            "EC PRIVATE KEY" if block.lines().any(|l| l.starts_with("Proc-Type:")) => {
                Err(PrivateKeyError::Encrypted {
                    format: "SEC1 with Proc-Type: 4,ENCRYPTED",
                })
            }
            "EC PRIVATE KEY" => {
                // PKCS#8 names its curve and each decoder checks it; SEC1's
                // curve parameters are optional and go unchecked. Each
                // decoder checks the embedded public key (OpenSSL always
                // writes one) against the scalar on its curve, and P-256 is
                // tried first: P-384's decoder would left-pad a 32-byte
                // P-256 scalar, a 48-byte P-384 scalar never fits P-256.
                if let Ok(k) = p256::SecretKey::from_sec1_pem(block) {
                    return Ok(Self::P256(k.into()));
                }
                if let Ok(k) = p384::SecretKey::from_sec1_pem(block) {
                    return Ok(Self::P384(k.into()));
                }
                Err(unsupported(
                    "a SEC1 EC key that is not on P-256 or P-384, or is damaged".into(),
                ))
            }
            "ENCRYPTED PRIVATE KEY" => Err(PrivateKeyError::Encrypted {
                format: "PKCS#8, BEGIN ENCRYPTED PRIVATE KEY",
            }),
            "PUBLIC KEY" => Err(unsupported(
                "this is a public key; signing needs its private half".into(),
            )),
            other => Err(unsupported(format!("a PEM block labelled {other:?}"))),
        }
    }

    /// The matching public key.
    pub fn verifying_key(&self) -> VerifyingKey {
        match self {
            Self::P256(k) => VerifyingKey::P256(*k.verifying_key()),
            Self::P384(k) => VerifyingKey::P384(*k.verifying_key()),
        }
    }

    fn sign_der(&self, message: &[u8]) -> Vec<u8> {
        use p256::ecdsa::signature::Signer;
        match self {
            Self::P256(k) => {
                let s: p256::ecdsa::Signature = k.sign(message);
                s.to_der().as_bytes().to_vec()
            }
            Self::P384(k) => {
                let s: p384::ecdsa::Signature = k.sign(message);
                s.to_der().as_bytes().to_vec()
            }
        }
    }
}

/// Paths `model_signing` leaves out of a directory's signature by default;
/// medguard writes and honours the same list.
pub const DEFAULT_IGNORED: [&str; 5] = [
    ".gitattributes",
    ".gitignore",
    ".github",
    ".git",
    "model.sig",
];

#[derive(Serialize)]
struct OutStatement<'a> {
    #[serde(rename = "_type")]
    statement_type: &'a str,
    subject: [OutSubject<'a>; 1],
    #[serde(rename = "predicateType")]
    predicate_type: &'a str,
    predicate: OutPredicate<'a>,
}

#[derive(Serialize)]
struct OutSubject<'a> {
    name: &'a str,
    digest: BTreeMap<&'a str, String>,
}

#[derive(Serialize)]
struct OutPredicate<'a> {
    resources: Vec<OutResource<'a>>,
    serialization: OutSerialization<'a>,
}

#[derive(Serialize)]
struct OutResource<'a> {
    digest: String,
    name: &'a str,
    algorithm: &'a str,
}

#[derive(Serialize)]
struct OutSerialization<'a> {
    allow_symlinks: bool,
    hash_type: &'a str,
    ignore_paths: &'a [&'a str],
    method: &'a str,
}

/// Signs the files of a model directory (relative `/`-separated paths and
/// their SHA-256 digests) as `model_signing sign key` does: an in-toto
/// statement in a DSSE envelope in a Sigstore bundle v0.3, ready to be
/// written as `model.sig`.
pub fn sign(name: &str, files: &BTreeMap<String, Sha256Digest>, key: &SigningKey) -> Vec<u8> {
    let subject = subject_digest(files);
    let statement = OutStatement {
        statement_type: STATEMENT_TYPE,
        subject: [OutSubject {
            name,
            digest: BTreeMap::from([("sha256", subject.to_string())]),
        }],
        predicate_type: PREDICATE_TYPE,
        predicate: OutPredicate {
            resources: files
                .iter()
                .map(|(name, digest)| OutResource {
                    digest: digest.to_string(),
                    name,
                    algorithm: "sha256",
                })
                .collect(),
            serialization: OutSerialization {
                allow_symlinks: false,
                hash_type: "sha256",
                ignore_paths: &DEFAULT_IGNORED,
                method: "files",
            },
        },
    };
    // Serialising plain strings and maps cannot fail.
    let payload = serde_json::to_vec(&statement).unwrap_or_default();
    let signature = key.sign_der(&pae(&payload));
    let bundle = serde_json::json!({
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {
            "publicKey": {"hint": key.verifying_key().fingerprint().to_string()},
            "tlogEntries": [],
        },
        "dsseEnvelope": {
            "payload": BASE64.encode(&payload),
            "payloadType": IN_TOTO_PAYLOAD_TYPE,
            "signatures": [{"sig": BASE64.encode(signature), "keyid": ""}],
        },
    });
    let mut out = serde_json::to_vec_pretty(&bundle).unwrap_or_default();
    out.push(b'\n');
    out
}
