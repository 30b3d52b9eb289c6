//! Attestation for medguard, with no I/O so that the browser build can reuse it.
//!
//! The host reads bytes; this crate decides whether they may run. The only way
//! to obtain an [`AttestedModel`] or a [`Pinned`] blob is to pass [`attest`] or
//! [`pin`], and both carry the very bytes that were hashed.

mod digest;
mod manifest;
mod pinned;
mod signature;

pub use digest::{ParseDigestError, Sha256Digest};
pub use manifest::{
    CalibrationSource, ColorConversion, InputShape, InputSpec, MANIFEST_MAX_BYTES, Manifest,
    ManifestError, ModelFile, OutputKind, OutputSpec, PixelMapping, PixelScale, ScreeningSection,
    ValueRange,
};
pub use pinned::{AttestError, AttestedModel, DigestMismatch, Pinned, attest, pin};
pub use signature::{
    BUNDLE_MAX_BYTES, ChangedFile, CheckedBundle, DEFAULT_IGNORED, FilesMismatch, SignatureError,
    SignedDirectory, SigningKey, VerifyingKey, sign, verify,
};
