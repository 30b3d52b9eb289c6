//! The guest this host was built with, and the pin that refuses any other.

use std::path::Path;

use medguard_attest::{Pinned, Sha256Digest, pin};

use crate::model_dir::{ModelDirError, read_capped};

/// The guest component built with this host (see `build.rs`).
static BUNDLED: &[u8] = include_bytes!(env!("MEDGUARD_GUEST_WASM"));

/// SHA-256 of the one guest this host runs.
pub fn expected_digest() -> Sha256Digest {
    env!("MEDGUARD_GUEST_SHA256")
        .parse()
        .expect("build.rs writes a canonical digest")
}

/// A guest file larger than this is refused unread.
const GUEST_MAX_BYTES: u64 = 256 << 20;

/// Why a guest was refused.
#[derive(Debug, thiserror::Error)]
pub enum GuestPinError {
    /// The file could not be read.
    #[error(transparent)]
    Read(#[from] ModelDirError),
    /// The bytes are not the pinned guest.
    #[error("guest module refused: {0}; this host runs only the guest it was built with")]
    Mismatch(#[from] medguard_attest::DigestMismatch),
}

/// The bundled guest, checked against the pin like any other.
pub fn bundled() -> Result<Pinned, GuestPinError> {
    Ok(pin(BUNDLED, expected_digest())?)
}

/// A guest read from `path` (for deployments that ship it beside the binary),
/// accepted only if it is byte-for-byte the pinned guest.
pub fn from_file(path: &Path) -> Result<Pinned, GuestPinError> {
    let bytes = read_capped(path, GUEST_MAX_BYTES)?;
    Ok(pin(bytes, expected_digest())?)
}
