//! The guest this host was built with, and the pin that refuses any other.
//!
//! The sandbox runs only a [`GuestModule`], and outside this module only
//! [`bundled`] and [`from_file`] make one, both against the digest the build
//! script computed: a caller cannot pin some other guest to its own hash.

use std::path::{Path, PathBuf};

use medguard_attest::{Pinned, Sha256Digest, pin};

use crate::model_dir::{ModelDirError, read_capped};
use crate::sandbox::{CompiledCache, GuestLoad, GuestProgram, Limits, Runtime, SandboxError};

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

/// Guest component bytes the sandbox may run: the build-time pin matched.
#[derive(Debug, Clone)]
pub struct GuestModule(Pinned);

impl GuestModule {
    /// The component bytes.
    pub fn bytes(&self) -> &[u8] {
        self.0.bytes()
    }

    /// Their SHA-256 (the build-time pin).
    pub fn digest(&self) -> Sha256Digest {
        self.0.digest()
    }

    /// Any component, unpinned: for the sandbox's own tests, which must run
    /// hostile guests to show that they are contained. Exists only with the
    /// `hostile-guests` feature, which the test crate alone enables.
    #[cfg(feature = "hostile-guests")]
    #[doc(hidden)]
    pub fn hostile_for_tests(bytes: Vec<u8>) -> Self {
        let digest = Sha256Digest::of(&bytes);
        Self(pin(bytes, digest).expect("bytes match their own digest"))
    }
}

/// The bundled guest, checked against the pin like any other.
pub fn bundled() -> Result<GuestModule, GuestPinError> {
    Ok(GuestModule(pin(BUNDLED, expected_digest())?))
}

/// A guest read from `path` (for deployments that ship it beside the binary),
/// accepted only if it is byte-for-byte the pinned guest.
pub fn from_file(path: &Path) -> Result<GuestModule, GuestPinError> {
    let bytes = read_capped(path, GUEST_MAX_BYTES)?;
    Ok(GuestModule(pin(bytes, expected_digest())?))
}

/// How a front end starts the sandbox: the CLI's global flags, the C ABI's
/// defaults. One place, so that every front end pins, caches and limits the
/// guest the same way.
#[derive(Debug, Clone, Default)]
pub struct SandboxSettings {
    /// Memory cap, deadline and stack of every session.
    pub limits: Limits,
    /// A guest file to run instead of the bundled copy (it must be
    /// byte-identical to the pin).
    pub guest: Option<PathBuf>,
    /// The compiled-guest cache's directory; `None` compiles at every start.
    pub cache_dir: Option<PathBuf>,
}

/// The sandbox, started: the program, what its load did, and why the cache
/// was not used when it could not be opened (the guest was then compiled;
/// worth a warning, not a failure).
pub struct Started {
    /// The pinned guest, compiled and pre-linked.
    pub program: GuestProgram,
    /// What the load did and how long it took.
    pub load: GuestLoad,
    /// Why the cache directory could not be used, if it could not.
    pub cache_warning: Option<String>,
}

/// Why the sandbox could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The guest is not the pinned one, or its file could not be read.
    #[error(transparent)]
    Pin(#[from] GuestPinError),
    /// The engine could not be built, or the guest not compiled.
    #[error("starting the sandbox")]
    Sandbox(#[from] SandboxError),
}

impl SandboxSettings {
    /// The defaults with the cache in its default directory
    /// ([`CompiledCache::default_dir`]), when there is one.
    pub fn with_default_cache() -> Self {
        Self {
            cache_dir: CompiledCache::default_dir(),
            ..Self::default()
        }
    }

    /// Pins the guest, opens the cache and loads the guest in a fresh runtime.
    pub fn start(&self) -> Result<Started, StartError> {
        let guest = match &self.guest {
            Some(path) => from_file(path)?,
            None => bundled()?,
        };
        let (cache, cache_warning) = match &self.cache_dir {
            Some(dir) => match CompiledCache::open(dir) {
                Ok(cache) => (Some(cache), None),
                Err(e) => (None, Some(format!("compiled-guest cache disabled: {e}"))),
            },
            None => (None, None),
        };
        let (program, load) = Runtime::new(self.limits)?.load_guest(&guest, cache.as_ref())?;
        Ok(Started {
            program,
            load,
            cache_warning,
        })
    }
}
