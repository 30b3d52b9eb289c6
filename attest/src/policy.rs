//! The trust policy: which keys may sign which models, the lowest version
//! each model may have, which keys are revoked and whether manifests must
//! expire. A deployment's one root of trust, written by its IT team in TOML:
//!
//! ```toml
//! schema = "medguard.policy/v1"
//! require_expiry = true                 # the default
//! revoked_keys = ["<fingerprint>"]      # SHA-256 of the public key PEM
//! ledger_key = "medguard.invalid/ledger/..+..+.."   # optional: the one ledger to record in
//!
//! [[keys]]
//! name = "vendor-2026"
//! public_key_file = "vendor-2026.pub.pem"   # or public_key = """-----BEGIN ..."""
//!
//! [[models]]
//! name = "pneumonia-cnn"                # the manifest's `name`
//! signers = ["vendor-2026"]
//! min_version = "1.0.0"
//! ```
//!
//! Anything the policy does not name is refused; every refusal says which
//! rule refused it.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use semver::Version;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::{Manifest, Sha256Digest, VerifyingKey};

/// The policy schema this build understands.
pub const POLICY_SCHEMA: &str = "medguard.policy/v1";

/// Policy files are small; anything larger is refused before parsing.
pub const POLICY_MAX_BYTES: usize = 1024 * 1024;

/// Domain tag of [`TrustPolicy::sha256`]: its input is never mistaken for
/// anything else hashed with SHA-256, and a change of its encoding gets a
/// new tag.
const POLICY_DIGEST_TAG: &[u8] = b"medguard.policy-digest/v1";

/// A parsed, validated trust policy. Only [`TrustPolicy::parse`] builds one.
#[derive(Debug, Clone)]
pub struct TrustPolicy {
    sha256: Sha256Digest,
    require_expiry: bool,
    keys: Vec<TrustedKey>,
    revoked: BTreeSet<Sha256Digest>,
    models: BTreeMap<String, ModelRule>,
    ledger_key: Option<String>,
}

/// A key the policy names.
#[derive(Debug, Clone)]
pub struct TrustedKey {
    name: String,
    key: VerifyingKey,
    fingerprint: Sha256Digest,
}

impl TrustedKey {
    /// The name the policy gives the key.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The public key.
    pub fn key(&self) -> &VerifyingKey {
        &self.key
    }

    /// SHA-256 of its PEM, as `model_signing` hints it.
    pub fn fingerprint(&self) -> Sha256Digest {
        self.fingerprint
    }
}

#[derive(Debug, Clone)]
struct ModelRule {
    signers: Vec<String>,
    min_version: Option<Version>,
}

/// The highest version of a model accepted so far, with the digest of the
/// manifest that carried it, so that the same version with other content is
/// caught too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HighWater {
    /// The version.
    pub version: Version,
    /// SHA-256 of its manifest file.
    pub manifest_sha256: Sha256Digest,
}

/// Why a policy file was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PolicyError {
    /// Not TOML of the policy's shape.
    #[error("trust policy is not valid TOML of the expected shape: {0}")]
    Syntax(String),
    /// Well-formed but inconsistent.
    #[error("trust policy is invalid: {0}")]
    Invalid(String),
}

/// Why the policy refused a model. Each variant names its rule.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Refusal {
    /// The signing key is not in the policy.
    #[error(
        "rule `keys`: the signature was made by key {hint}, which the trust policy does not list"
    )]
    UnknownKey {
        /// The bundle's key hint, or `(none)`.
        hint: String,
    },
    /// The signing key is revoked.
    #[error("rule `revoked_keys`: key {name} ({fingerprint}) is revoked")]
    RevokedKey {
        /// The key's policy name, or `(unnamed)`.
        name: String,
        /// Its fingerprint.
        fingerprint: Sha256Digest,
    },
    /// No `[[models]]` entry for the manifest's name.
    #[error(
        "rule `models`: the trust policy has no entry for model {model:?}; add a [[models]] entry naming who may sign it"
    )]
    UnknownModel {
        /// The manifest's model name.
        model: String,
    },
    /// The key is trusted, but not for this model.
    #[error("rule `models.signers`: key {key:?} may not sign model {model:?} (allowed: {allowed})")]
    SignerNotAllowed {
        /// The signing key's policy name.
        key: String,
        /// The manifest's model name.
        model: String,
        /// The keys that may.
        allowed: String,
    },
    /// The version is below the policy's floor.
    #[error("rule `models.min_version`: {model} {version} is older than the minimum {minimum}")]
    BelowMinimum {
        /// Model name.
        model: String,
        /// Offered version.
        version: Version,
        /// The policy's minimum.
        minimum: Version,
    },
    /// A newer version was accepted before.
    #[error(
        "rollback: {model} {version} is older than {high_water}, which this deployment already accepted"
    )]
    Rollback {
        /// Model name.
        model: String,
        /// Offered version.
        version: Version,
        /// The highest version accepted so far.
        high_water: Version,
    },
    /// The same version was accepted before with different content.
    #[error(
        "rollback: {model} {version} was already accepted with another manifest (sha256 {known}, now {offered}); a changed model needs a new version"
    )]
    VersionReuse {
        /// Model name.
        model: String,
        /// The version.
        version: Version,
        /// Digest of the manifest accepted before.
        known: Sha256Digest,
        /// Digest of the manifest offered now.
        offered: Sha256Digest,
    },
    /// The policy requires an expiry and the manifest has none.
    #[error(
        "rule `require_expiry`: the manifest of {model} {version} has no `expires`; the signer must set one"
    )]
    NoExpiry {
        /// Model name.
        model: String,
        /// Version.
        version: Version,
    },
    /// The manifest has expired.
    #[error(
        "expiry: the manifest of {model} {version} expired at {expires} (now {now}); ask the signer for a fresh one"
    )]
    Expired {
        /// Model name.
        model: String,
        /// Version.
        version: Version,
        /// When it expired.
        expires: Timestamp,
        /// The time of the check.
        now: Timestamp,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    schema: String,
    #[serde(default = "default_require_expiry")]
    require_expiry: bool,
    #[serde(default)]
    revoked_keys: Vec<String>,
    #[serde(default)]
    keys: Vec<RawKey>,
    #[serde(default)]
    models: Vec<RawModel>,
    ledger_key: Option<String>,
}

fn default_require_expiry() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    name: String,
    public_key: Option<String>,
    public_key_file: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    name: String,
    signers: Vec<String>,
    min_version: Option<Version>,
}

impl TrustPolicy {
    /// Parses and validates a policy. `read_key_file` turns a
    /// `public_key_file` entry into PEM text; the caller decides where files
    /// live (the host resolves them next to the policy), so this stays free
    /// of I/O.
    pub fn parse(
        text: &str,
        mut read_key_file: impl FnMut(&str) -> Result<String, String>,
    ) -> Result<Self, PolicyError> {
        let invalid = |why: String| PolicyError::Invalid(why);
        if text.len() > POLICY_MAX_BYTES {
            return Err(invalid(format!(
                "{} bytes, more than the {POLICY_MAX_BYTES}-byte limit",
                text.len()
            )));
        }
        let raw: RawPolicy =
            toml::from_str(text).map_err(|e| PolicyError::Syntax(e.message().to_owned()))?;
        if raw.schema != POLICY_SCHEMA {
            return Err(invalid(format!(
                "schema {:?}; this build understands {POLICY_SCHEMA:?}",
                raw.schema
            )));
        }
        let mut revoked = BTreeSet::new();
        for r in &raw.revoked_keys {
            let fingerprint: Sha256Digest = r
                .parse()
                .map_err(|e| invalid(format!("revoked_keys: {e}")))?;
            revoked.insert(fingerprint);
        }
        // The digest covers the text and every key as resolved; see `sha256`.
        let mut digest = Sha256::new();
        let mut field = |bytes: &[u8]| {
            digest.update((bytes.len() as u64).to_be_bytes());
            digest.update(bytes);
        };
        field(POLICY_DIGEST_TAG);
        field(text.as_bytes());
        field(&(raw.keys.len() as u64).to_be_bytes());
        let mut keys: Vec<TrustedKey> = Vec::new();
        for k in raw.keys {
            if k.name.trim().is_empty() {
                return Err(invalid("a [[keys]] entry has an empty name".into()));
            }
            if keys.iter().any(|o| o.name == k.name) {
                return Err(invalid(format!("key {:?} is listed twice", k.name)));
            }
            let pem = match (k.public_key, k.public_key_file) {
                (Some(pem), None) => pem,
                (None, Some(file)) => {
                    read_key_file(&file).map_err(|e| invalid(format!("key {:?}: {e}", k.name)))?
                }
                _ => {
                    return Err(invalid(format!(
                        "key {:?} needs exactly one of public_key and public_key_file",
                        k.name
                    )));
                }
            };
            field(k.name.as_bytes());
            field(pem.as_bytes());
            let key = VerifyingKey::from_pem(&pem)
                .map_err(|e| invalid(format!("key {:?}: {e}", k.name)))?;
            let fingerprint = key.fingerprint();
            if let Some(o) = keys.iter().find(|o| o.fingerprint == fingerprint) {
                return Err(invalid(format!(
                    "keys {:?} and {:?} are the same key",
                    o.name, k.name
                )));
            }
            keys.push(TrustedKey {
                name: k.name,
                key,
                fingerprint,
            });
        }
        let mut models = BTreeMap::new();
        for m in raw.models {
            if m.signers.is_empty() {
                return Err(invalid(format!("model {:?} names no signers", m.name)));
            }
            if let Some(s) = m
                .signers
                .iter()
                .find(|s| !keys.iter().any(|k| &k.name == *s))
            {
                return Err(invalid(format!(
                    "model {:?} names signer {s:?}, which no [[keys]] entry defines",
                    m.name
                )));
            }
            let rule = ModelRule {
                signers: m.signers,
                min_version: m.min_version,
            };
            if models.insert(m.name.clone(), rule).is_some() {
                return Err(invalid(format!("model {:?} is listed twice", m.name)));
            }
        }
        if let Some(k) = &raw.ledger_key
            && (k.is_empty() || k.chars().any(char::is_whitespace) || !k.contains('+'))
        {
            return Err(invalid(format!(
                "ledger_key {k:?} is not a verifier key as `medguard ledger key` prints it"
            )));
        }
        Ok(Self {
            sha256: Sha256Digest::from_bytes(digest.finalize().into()),
            require_expiry: raw.require_expiry,
            keys,
            revoked,
            models,
            ledger_key: raw.ledger_key,
        })
    }

    /// The policy's digest, which the ledger records with every admission
    /// and refusal and compares to log a `policy-changed` entry. It covers
    /// the policy text and every key the policy resolved, not the text
    /// alone: replacing the file a `public_key_file` names swaps the root of
    /// trust without changing a byte of the TOML.
    ///
    /// It is SHA-256 over a domain tag, the text, the number of `[[keys]]`
    /// entries and, for each in the policy's order, its name and the exact
    /// PEM text it resolved to (the `public_key` string or the contents of
    /// its `public_key_file`), every part prefixed with its length as a
    /// big-endian u64, so that no two different policies concatenate to the
    /// same input. Any change to a key file changes it, even one of
    /// whitespace only. An inline key and the same key in a file give
    /// different digests, since the texts differ. It is not the SHA-256 of
    /// the policy file.
    pub fn sha256(&self) -> Sha256Digest {
        self.sha256
    }

    /// The verifier key of the one ledger this deployment records in, if the
    /// policy pins it: a ledger with another key (deleted and recreated, or
    /// swapped for another) is refused rather than trusted with the rollback
    /// marks.
    pub fn ledger_key(&self) -> Option<&str> {
        self.ledger_key.as_deref()
    }

    /// The keys a signature may come from: the one its hint names, or, for a
    /// bundle without a hint, every key. Revocation is checked first, so a
    /// revoked key is named as such even when the policy still lists it.
    pub fn candidate_keys(&self, hint: Option<&str>) -> Result<Vec<&TrustedKey>, Refusal> {
        let Some(hint) = hint else {
            return Ok(self
                .keys
                .iter()
                .filter(|k| !self.revoked.contains(&k.fingerprint))
                .collect());
        };
        let named = |fingerprint: &Sha256Digest| {
            self.keys
                .iter()
                .find(|k| k.fingerprint == *fingerprint)
                .map_or_else(|| "(unnamed)".to_owned(), |k| k.name.clone())
        };
        if let Some(fingerprint) = self.revoked.iter().find(|f| f.to_string() == hint) {
            return Err(Refusal::RevokedKey {
                name: named(fingerprint),
                fingerprint: *fingerprint,
            });
        }
        match self.keys.iter().find(|k| k.fingerprint.to_string() == hint) {
            Some(k) => Ok(vec![k]),
            None => Err(Refusal::UnknownKey {
                hint: hint.to_owned(),
            }),
        }
    }

    /// The model rules for a manifest signed by `signer`, in order: the
    /// model is named, the signer may sign it, the manifest has not expired,
    /// the version is at least the policy's minimum and the high-water mark,
    /// and a version equal to the high-water mark has the same manifest.
    pub fn check_manifest(
        &self,
        signer: &TrustedKey,
        manifest: &Manifest,
        manifest_sha256: Sha256Digest,
        high_water: Option<&HighWater>,
        now: Timestamp,
    ) -> Result<(), Refusal> {
        let model = &manifest.name;
        let version = &manifest.version;
        let rule = self
            .models
            .get(model)
            .ok_or_else(|| Refusal::UnknownModel {
                model: model.clone(),
            })?;
        if !rule.signers.contains(&signer.name) {
            return Err(Refusal::SignerNotAllowed {
                key: signer.name.clone(),
                model: model.clone(),
                allowed: rule.signers.join(", "),
            });
        }
        match manifest.expires {
            Some(expires) if expires <= now => {
                return Err(Refusal::Expired {
                    model: model.clone(),
                    version: version.clone(),
                    expires,
                    now,
                });
            }
            None if self.require_expiry => {
                return Err(Refusal::NoExpiry {
                    model: model.clone(),
                    version: version.clone(),
                });
            }
            _ => {}
        }
        if let Some(minimum) = &rule.min_version
            && version < minimum
        {
            return Err(Refusal::BelowMinimum {
                model: model.clone(),
                version: version.clone(),
                minimum: minimum.clone(),
            });
        }
        if let Some(hw) = high_water {
            if *version < hw.version {
                return Err(Refusal::Rollback {
                    model: model.clone(),
                    version: version.clone(),
                    high_water: hw.version.clone(),
                });
            }
            if *version == hw.version && manifest_sha256 != hw.manifest_sha256 {
                return Err(Refusal::VersionReuse {
                    model: model.clone(),
                    version: version.clone(),
                    known: hw.manifest_sha256,
                    offered: manifest_sha256,
                });
            }
        }
        Ok(())
    }
}
