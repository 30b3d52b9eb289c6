//! Attestation for medguard, with no I/O so that the browser build can reuse it.
//!
//! The host reads bytes; this crate decides whether they may run. The only way
//! to obtain an [`AttestedModel`] is to pass [`vouch_unsigned`] (a manifest the caller
//! vouches for) or the admission stages under a [`TrustPolicy`]
//! ([`admit_signature`]); a [`Pinned`] blob comes only from [`pin`]. Each
//! carries the very bytes that were hashed.

// Refusals carry their evidence (names, versions, digests, times) so that
// the message can say exactly what was refused; they happen once per model
// load, never in a hot loop, so their size on the error path costs nothing.
#![allow(clippy::result_large_err)]

mod admit;
mod digest;
mod manifest;
mod pinned;
mod policy;
mod signature;

pub use admit::{
    AdmitError, AdmittedManifest, MANIFEST_PATH, SIGNATURE_PATH, SignedBy, admit_files,
    admit_signature,
};

pub use digest::{ParseDigestError, Sha256Digest};
pub use manifest::{
    CalibrationSource, ColorConversion, InputShape, InputSpec, MANIFEST_MAX_BYTES, Manifest,
    ManifestError, ModelFile, OutputKind, OutputSpec, PixelMapping, PixelScale, ScreeningSection,
    Training, TrainingInput, ValueRange,
};
pub use pinned::{
    AttestError, AttestedModel, DigestMismatch, Hashed, Pinned, Provenance, Signer, pin,
    read_hashing, vouch_unsigned,
};
pub use policy::{
    HighWater, POLICY_MAX_BYTES, POLICY_SCHEMA, PolicyError, Refusal, TrustPolicy, TrustedKey,
};
#[cfg(fuzzing)]
pub use signature::read_statement_for_fuzzing;
pub use signature::{
    BUNDLE_MAX_BYTES, ChangedFile, CheckedBundle, DEFAULT_IGNORED, FilesMismatch, PrivateKeyError,
    SignatureError, SignedDirectory, SigningKey, VerifyingKey, sign, verify,
};
