//! Admitting a signed model directory under the deployment's trust policy:
//! the I/O around `medguard_attest`'s admission stages, in the order that
//! refuses cheaply first and reads each file once.
//!
//! 1. `model.sig` (size-capped), its structure, then the signature with the
//!    policy's key for it (unknown and revoked keys refused here);
//! 2. `manifest.json` (size-capped), which must be the signed one, then the
//!    policy's model rules and the rollback high-water mark;
//! 3. the directory's file names against the signed list;
//! 4. the model file, read once, capped at its declared size, hashed as it
//!    is read:
//!    those bytes go to the sandbox; every other file streamed and hashed;
//!
//! The rollback high-water marks come from the caller (the ledger's view),
//! and so does recording the outcome.
//!
//! Nothing reaches the guest before all of it passed: the guest is started
//! only with an [`AttestedModel`], which only these stages build.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use medguard_attest::{
    AdmitError, AttestedModel, BUNDLE_MAX_BYTES, CheckedBundle, HighWater, MANIFEST_MAX_BYTES,
    MANIFEST_PATH, POLICY_MAX_BYTES, PolicyError, Sha256Digest, TrustPolicy, admit_signature,
};
use thiserror::Error;

use crate::model_dir::{MODEL_MAX_BYTES, ModelDirError, read_capped, read_hashed, read_model_file};
use crate::signing::{SIGNATURE_FILE, SigningError, digest_capped, directory_files};

/// Why a model directory was not admitted, or the policy not loaded.
#[derive(Debug, Error)]
pub enum AdmissionError {
    /// The directory has no signature file.
    #[error(
        "{} has no signature ({SIGNATURE_FILE}); the trust policy admits only signed models",
        dir.display()
    )]
    Unsigned {
        /// The model directory.
        dir: PathBuf,
    },
    /// A file could not be read or is over its cap.
    #[error(transparent)]
    Read(#[from] ModelDirError),
    /// The directory walk failed (a symlink, a special file, an I/O error).
    #[error(transparent)]
    Walk(#[from] SigningError),
    /// The signature, the policy or the file comparison refused it.
    #[error("{}: {source}", dir.display())]
    Refused {
        /// The model directory.
        dir: PathBuf,
        /// Why (boxed: refusals carry their evidence and are large).
        source: Box<AdmitError>,
    },
    /// The policy file is invalid.
    #[error("{}: {source}", path.display())]
    Policy {
        /// The policy file.
        path: PathBuf,
        /// Why.
        source: PolicyError,
    },
}

/// Reads a trust policy; `public_key_file` entries are read relative to the
/// policy's own directory, each capped like the policy. Returns it with its
/// digest ([`TrustPolicy::sha256`]: the text and every key it resolved),
/// which the ledger records.
pub fn load_policy(path: &Path) -> Result<(TrustPolicy, Sha256Digest), AdmissionError> {
    let bytes = read_capped(path, POLICY_MAX_BYTES as u64)?;
    let policy_err = |source| AdmissionError::Policy {
        path: path.to_owned(),
        source,
    };
    let text = String::from_utf8(bytes)
        .map_err(|_| policy_err(PolicyError::Syntax("not UTF-8 text".into())))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let policy = TrustPolicy::parse(&text, |file| {
        let bytes =
            read_capped(&base.join(file), POLICY_MAX_BYTES as u64).map_err(|e| e.to_string())?;
        String::from_utf8(bytes).map_err(|_| format!("{file} is not UTF-8 text"))
    })
    .map_err(policy_err)?;
    let digest = policy.sha256();
    Ok((policy, digest))
}

/// Admits the model in `dir` under `policy` at time `now`, with the
/// deployment's rollback `high_water` marks. See the module documentation
/// for the order of the checks.
pub fn admit_directory(
    dir: &Path,
    policy: &TrustPolicy,
    high_water: impl FnOnce(&str) -> Option<HighWater>,
    now: Timestamp,
) -> Result<AttestedModel, AdmissionError> {
    let refused = |source: AdmitError| AdmissionError::Refused {
        dir: dir.to_owned(),
        source: Box::new(source),
    };
    // 1.
    let sig_path = dir.join(SIGNATURE_FILE);
    if !sig_path.exists() {
        return Err(AdmissionError::Unsigned {
            dir: dir.to_owned(),
        });
    }
    let bundle = read_model_file(&sig_path, BUNDLE_MAX_BYTES as u64)?;
    let bundle = CheckedBundle::parse(&bundle).map_err(|e| refused(e.into()))?;
    let signed = admit_signature(policy, &bundle).map_err(refused)?;
    // 2.
    let manifest_bytes = read_model_file(&dir.join(MANIFEST_PATH), MANIFEST_MAX_BYTES as u64)?;
    let admitted = signed
        .admit_manifest(&manifest_bytes, high_water, now)
        .map_err(refused)?;
    // 3.
    let ignored: Vec<&str> = admitted.ignored().iter().map(String::as_str).collect();
    let files = directory_files(dir, &ignored)?;
    admitted
        .check_file_names(files.keys().map(String::as_str))
        .map_err(refused)?;
    // 4.
    let model_file = admitted.manifest().model.file.clone();
    let model_path = dir.join(&model_file);
    // One byte past the declared size tells "too long" from "right" without
    // reading an endless file.
    let cap = MODEL_MAX_BYTES.min(admitted.manifest().model.size.saturating_add(1));
    let model_bytes = read_hashed(&model_path, cap)?;
    let mut others = BTreeMap::new();
    for (name, path) in &files {
        if name != MANIFEST_PATH && *name != model_file {
            others.insert(name.clone(), digest_capped(path)?);
        }
    }
    let model = admitted.admit_model(model_bytes, others).map_err(refused)?;
    Ok(model)
}
