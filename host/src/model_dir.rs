//! Reading a model directory: the manifest and the model file it names, each
//! read once with a size cap, then attested. Nothing is re-read afterwards.

use std::fs::File;
use std::io::{self, Read};

use rustix::fs::{Mode, OFlags};
use std::path::{Path, PathBuf};

use medguard_attest::{
    AttestError, AttestedModel, Hashed, MANIFEST_MAX_BYTES, MANIFEST_PATH, Manifest, ManifestError,
    vouch_unsigned,
};
use thiserror::Error;

/// Model files larger than this are refused without reading further.
pub const MODEL_MAX_BYTES: u64 = 512 << 20;

/// Why a model directory was refused.
#[derive(Debug, Error)]
pub enum ModelDirError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A file is over its cap.
    #[error("{} is larger than the {cap}-byte limit", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The cap.
        cap: u64,
    },
    /// The manifest is invalid.
    #[error("{}: {source}", path.display())]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// Why it was refused.
        source: ManifestError,
    },
    /// The model does not match its manifest.
    #[error("{}: {source}", path.display())]
    Attest {
        /// The model file.
        path: PathBuf,
        /// Why it was refused.
        source: AttestError,
    },
}

/// Reads the model in `dir` and checks it against its manifest, which is
/// taken on the caller's word ([`medguard_attest::vouch_unsigned`]): **for
/// vendor tools only** (`calibrate`, `eval`), never for serving. Deployments
/// admit signed directories (`crate::admission`, `crate::guard::Guard::admit`).
pub fn load_unsigned(dir: &Path) -> Result<AttestedModel, ModelDirError> {
    let manifest_path = dir.join(MANIFEST_PATH);
    let manifest_bytes = read_model_file(&manifest_path, MANIFEST_MAX_BYTES as u64)?;
    let manifest = Manifest::parse(&manifest_bytes).map_err(|source| ModelDirError::Manifest {
        path: manifest_path,
        source,
    })?;
    let model_path = dir.join(&manifest.model.file);
    // Cap at the smaller of the global limit and one byte past the declared
    // size: enough to tell "too long" from "right", never an endless read.
    let cap = MODEL_MAX_BYTES.min(manifest.model.size.saturating_add(1));
    let model_bytes = read_model_file(&model_path, cap)?;
    vouch_unsigned(manifest, model_bytes).map_err(|source| ModelDirError::Attest {
        path: model_path,
        source,
    })
}

/// Reads at most `cap` bytes of `path`, hashing them as they are read (one
/// pass over a large model); more than `cap` is an error.
pub fn read_hashed(path: &Path, cap: u64) -> Result<Hashed, ModelDirError> {
    let io_err = |source| ModelDirError::Io {
        path: path.to_owned(),
        source,
    };
    let file = open_regular(path, Links::Refuse).map_err(io_err)?;
    let size = file.metadata().map_or(0, |m| m.len());
    Hashed::read(file, cap, size)
        .map_err(io_err)?
        .ok_or_else(|| ModelDirError::TooLarge {
            path: path.to_owned(),
            cap,
        })
}

/// Whether opening a file may follow a symbolic link in its last component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    /// Files the operator names (a policy in a Kubernetes ConfigMap is a link).
    Follow,
    /// Files inside a model directory: a link could point anywhere.
    Refuse,
}

/// Opens `path` for reading if it is a regular file. The open itself never
/// blocks (`O_NONBLOCK`: a FIFO planted as `model.sig` would otherwise hang
/// every medguard process on this data directory), and the type is checked on
/// the opened descriptor, so it cannot be swapped after the check.
pub fn open_regular(path: &Path, links: Links) -> io::Result<File> {
    let mut flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY;
    if links == Links::Refuse {
        flags |= OFlags::NOFOLLOW;
    }
    let file = File::from(rustix::fs::open(path, flags, Mode::empty()).map_err(|e| {
        if e == rustix::io::Errno::LOOP && links == Links::Refuse {
            io::Error::other("is a symbolic link; a model directory may hold only regular files")
        } else {
            io::Error::from(e)
        }
    })?);
    if !file.metadata()?.is_file() {
        return Err(io::Error::other(
            "not a regular file (a FIFO, device, socket or directory)",
        ));
    }
    Ok(file)
}

/// Reads at most `cap` bytes of the regular file `path` inside a model
/// directory (no links); more than `cap` is an error.
pub fn read_model_file(path: &Path, cap: u64) -> Result<Vec<u8>, ModelDirError> {
    read_with(path, cap, Links::Refuse)
}

/// Reads at most `cap` bytes of the regular file `path`; more than `cap` is
/// an error.
pub fn read_capped(path: &Path, cap: u64) -> Result<Vec<u8>, ModelDirError> {
    read_with(path, cap, Links::Follow)
}

fn read_with(path: &Path, cap: u64, links: Links) -> Result<Vec<u8>, ModelDirError> {
    let io_err = |source| ModelDirError::Io {
        path: path.to_owned(),
        source,
    };
    let file = open_regular(path, links).map_err(io_err)?;
    // Sized from the metadata when it is believable, so a large model is read
    // without reallocating; pipes report 0 and grow as usual.
    let hint = file.metadata().map_or(0, |m| m.len()).min(cap);
    let mut bytes = Vec::with_capacity(usize::try_from(hint).unwrap_or(0).saturating_add(1));
    // Read one byte past the cap so "exactly cap" and "more" differ; works for
    // pipes and device files that report no size.
    file.take(cap.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io_err)?;
    if bytes.len() as u64 > cap {
        return Err(ModelDirError::TooLarge {
            path: path.to_owned(),
            cap,
        });
    }
    Ok(bytes)
}
