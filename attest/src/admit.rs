//! Admission of a signed model directory under a trust policy, in stages
//! whose types only the previous stage can build:
//!
//! [`CheckedBundle`] → [`admit_signature`] → [`SignedBy`]
//! → [`SignedBy::admit_manifest`] → [`AdmittedManifest`]
//! → [`AdmittedManifest::admit_model`] → [`AttestedModel`].
//!
//! Every cheap refusal comes before any expensive read: the host reads the
//! model file only once the signature verified and the policy accepted the
//! signed manifest, and the bytes it hashes for the signature check are the
//! bytes the sandbox gets.

use std::collections::BTreeMap;

use jiff::Timestamp;
use thiserror::Error;

use crate::pinned::{self, AttestError, AttestedModel, Hashed, Provenance, Signer};
use crate::policy::{HighWater, Refusal, TrustPolicy, TrustedKey};
use crate::signature::{
    ChangedFile, CheckedBundle, FilesMismatch, SignatureError, SignedDirectory, verify,
};
use crate::{Manifest, ManifestError, Sha256Digest};

/// The manifest's path inside a signed model directory.
pub const MANIFEST_PATH: &str = "manifest.json";

/// The signature bundle's path inside a signed model directory.
pub const SIGNATURE_PATH: &str = "model.sig";

/// Why a signed model directory was not admitted.
#[derive(Debug, Error)]
pub enum AdmitError {
    /// The directory has no signature bundle.
    #[error(
        "the model directory has no signature ({SIGNATURE_PATH}); the trust policy admits only signed models"
    )]
    Unsigned,
    /// The trust policy refused it (the message names the rule).
    #[error(transparent)]
    Policy(#[from] Refusal),
    /// The signature did not verify.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// The directory differs from what was signed.
    #[error("the model directory does not match its signature: {0}")]
    Files(#[from] FilesMismatch),
    /// The signed manifest is not a valid manifest.
    #[error("signed manifest: {0}")]
    Manifest(#[from] ManifestError),
    /// The model bytes do not match the manifest.
    #[error("model file does not match its manifest: {0}")]
    Attest(#[from] AttestError),
}

/// A signature that verified with a key of the policy. Files not yet compared.
#[derive(Debug, Clone)]
pub struct SignedBy<'p> {
    policy: &'p TrustPolicy,
    key: &'p TrustedKey,
    directory: SignedDirectory,
}

/// Stage 1: finds the policy's key for the bundle (unknown and revoked keys
/// are refused here) and verifies the signature with it.
pub fn admit_signature<'p>(
    policy: &'p TrustPolicy,
    bundle: &CheckedBundle,
) -> Result<SignedBy<'p>, AdmitError> {
    let candidates = policy.candidate_keys(bundle.key_hint())?;
    let mut last = None;
    for key in candidates {
        match verify(bundle, key.key()) {
            Ok(directory) => {
                return Ok(SignedBy {
                    policy,
                    key,
                    directory,
                });
            }
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) => e.into(),
        None => Refusal::UnknownKey {
            hint: "(none)".into(),
        }
        .into(),
    })
}

impl<'p> SignedBy<'p> {
    /// What the key signed.
    pub fn directory(&self) -> &SignedDirectory {
        &self.directory
    }

    /// Stage 2: `manifest_bytes` must be the signed `manifest.json`; only
    /// then are they parsed, and the policy's model rules applied with the
    /// deployment's `high_water` mark for that model name.
    pub fn admit_manifest(
        self,
        manifest_bytes: &[u8],
        high_water: impl FnOnce(&str) -> Option<HighWater>,
        now: Timestamp,
    ) -> Result<AdmittedManifest<'p>, AdmitError> {
        let digest = Sha256Digest::of(manifest_bytes);
        let mismatch = match self.directory.files().get(MANIFEST_PATH) {
            None => Some(FilesMismatch {
                missing: Vec::new(),
                extra: vec![MANIFEST_PATH.to_owned()],
                changed: Vec::new(),
            }),
            Some(&expected) if expected != digest => Some(FilesMismatch {
                missing: Vec::new(),
                extra: Vec::new(),
                changed: vec![ChangedFile {
                    file: MANIFEST_PATH.to_owned(),
                    expected,
                    actual: digest,
                }],
            }),
            Some(_) => None,
        };
        if let Some(mismatch) = mismatch {
            return Err(mismatch.into());
        }
        let manifest = Manifest::parse(manifest_bytes)?;
        let mark = high_water(&manifest.name);
        self.policy
            .check_manifest(self.key, &manifest, digest, mark.as_ref(), now)?;
        Ok(AdmittedManifest {
            signed: self,
            manifest,
            digest,
        })
    }
}

/// A signed manifest the policy accepts. The model is not read yet.
#[derive(Debug, Clone)]
pub struct AdmittedManifest<'p> {
    signed: SignedBy<'p>,
    manifest: Manifest,
    digest: Sha256Digest,
}

impl AdmittedManifest<'_> {
    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Paths the signer left out of the signature (git metadata, the
    /// signature itself); the host leaves them out of its walk too.
    pub fn ignored(&self) -> &[String] {
        self.signed.directory.ignored()
    }

    /// Stage 3a: the directory's file names (signature and ignored paths
    /// left out) are exactly the signed ones. Cheap, so the host calls it
    /// before reading or hashing anything else.
    pub fn check_file_names<'a>(
        &self,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), AdmitError> {
        Ok(self.signed.directory.check_file_names(names)?)
    }

    /// Stage 3: the model file's bytes and the digests of every other file
    /// of the directory (all but the manifest and the model) must be exactly
    /// what was signed, naming each extra, missing and changed file; the
    /// model bytes must also match the manifest. The model was hashed once,
    /// as it was read ([`Hashed::read`]), and those bytes are the ones the [`AttestedModel`] carries.
    pub fn admit_model(
        self,
        model: Hashed,
        mut other_files: BTreeMap<String, Sha256Digest>,
    ) -> Result<AttestedModel, AdmitError> {
        let (bytes, model_digest) = model.into_parts();
        other_files.insert(MANIFEST_PATH.to_owned(), self.digest);
        other_files.insert(self.manifest.model.file.clone(), model_digest);
        self.signed.directory.check_files(&other_files)?;
        let signer = Signer {
            name: self.signed.key.name().to_owned(),
            fingerprint: self.signed.key.fingerprint(),
        };
        let provenance = Provenance::Signed {
            signer,
            manifest_sha256: self.digest,
        };
        Ok(pinned::attest_hashed(
            self.manifest,
            bytes,
            model_digest,
            provenance,
        )?)
    }
}

/// Admits a model directory held in memory, as relative path (`/`-separated)
/// to contents: what a browser fetched. The same stages, in the same order,
/// as the host's admission of a directory on disk, with the same refusals.
/// There is no file system here, so no symlink or special file to refuse;
/// the caller must not have followed any either.
pub fn admit_files(
    policy: &TrustPolicy,
    files: &BTreeMap<String, Vec<u8>>,
    high_water: impl FnOnce(&str) -> Option<HighWater>,
    now: Timestamp,
) -> Result<AttestedModel, AdmitError> {
    let bundle = files.get(SIGNATURE_PATH).ok_or(AdmitError::Unsigned)?;
    let bundle = CheckedBundle::parse(bundle)?;
    let signed = admit_signature(policy, &bundle)?;
    let manifest_bytes = files.get(MANIFEST_PATH).ok_or_else(|| FilesMismatch {
        missing: vec![MANIFEST_PATH.to_owned()],
        extra: Vec::new(),
        changed: Vec::new(),
    })?;
    let admitted = signed.admit_manifest(manifest_bytes, high_water, now)?;
    let ignored = admitted.ignored();
    let listed: Vec<&str> = files
        .keys()
        .map(String::as_str)
        .filter(|name| !is_ignored(name, ignored))
        .collect();
    admitted.check_file_names(listed.iter().copied())?;
    let model_file = &admitted.manifest().model.file;
    let model = files.get(model_file).cloned().unwrap_or_default();
    let others = listed
        .iter()
        .filter(|&&name| name != MANIFEST_PATH && name != model_file)
        .map(|&name| (name.to_owned(), Sha256Digest::of(&files[name])))
        .collect();
    admitted.admit_model(Hashed::of(model), others)
}

/// Whether `name` is an ignored path or lies under one (the walk on disk
/// never enters an ignored directory).
fn is_ignored(name: &str, ignored: &[String]) -> bool {
    ignored.iter().any(|i| {
        name == i
            || name
                .strip_prefix(i.as_str())
                .is_some_and(|rest| rest.starts_with('/'))
    })
}
