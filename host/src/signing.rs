//! Signing and verifying model directories in the OpenSSF model-signing
//! format: the file walk and I/O around `medguard_attest::{sign, verify}`.
//!
//! Every regular file below the directory is signed, by `/`-separated
//! relative path, except the paths `model_signing` ignores by default (the
//! signature itself, git metadata). Symlinks are refused, as the tool does by
//! default, so a signed directory cannot point outside itself.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use medguard_attest::{DEFAULT_IGNORED, Sha256Digest, SigningKey, sign};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::model_dir::{MODEL_MAX_BYTES, ModelDirError};

/// The signature's file name inside a model directory (the tool's default).
pub const SIGNATURE_FILE: &str = "model.sig";

/// Why a directory could not be signed or its signature was refused.
#[derive(Debug, Error)]
pub enum SigningError {
    /// Reading or writing failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A file over its size cap.
    #[error(transparent)]
    Read(#[from] ModelDirError),
    /// A symlink inside the directory.
    #[error("{} is a symlink; signed model directories may not contain links", path.display())]
    Symlink {
        /// The link.
        path: PathBuf,
    },
    /// A FIFO, socket or device inside the directory.
    #[error("{} is not a regular file; signed model directories hold only files and folders", path.display())]
    SpecialFile {
        /// The entry.
        path: PathBuf,
    },
}

/// Every regular file below `dir` except the `ignored` top-level paths, by
/// `/`-separated relative path. Symlinks and special files (a FIFO would
/// block the reader forever) are refused.
pub fn directory_files(
    dir: &Path,
    ignored: &[&str],
) -> Result<BTreeMap<String, PathBuf>, SigningError> {
    let mut out = BTreeMap::new();
    walk(dir, dir, ignored, &mut out)?;
    Ok(out)
}

/// SHA-256 of every file [`directory_files`] lists, streamed with a per-file cap.
pub fn directory_digests(
    dir: &Path,
    ignored: &[&str],
) -> Result<BTreeMap<String, Sha256Digest>, SigningError> {
    directory_files(dir, ignored)?
        .into_iter()
        .map(|(name, path)| Ok((name, digest_capped(&path)?)))
        .collect()
}

fn walk(
    root: &Path,
    dir: &Path,
    ignored: &[&str],
    out: &mut BTreeMap<String, PathBuf>,
) -> Result<(), SigningError> {
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| SigningError::Io { path, source }
    };
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let path = entry.path();
        let relative = path
            .strip_prefix(root)
            .unwrap_or(&path)
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("/");
        if ignored.contains(&relative.as_str()) {
            continue;
        }
        let kind = entry.file_type().map_err(io_err(&path))?;
        if kind.is_symlink() {
            return Err(SigningError::Symlink { path });
        } else if kind.is_dir() {
            walk(root, &path, ignored, out)?;
        } else if kind.is_file() {
            out.insert(relative, path);
        } else {
            return Err(SigningError::SpecialFile { path });
        }
    }
    Ok(())
}

/// SHA-256 of a file, streamed; more than [`MODEL_MAX_BYTES`] is refused.
pub fn digest_capped(path: &Path) -> Result<Sha256Digest, SigningError> {
    let io_err = |source| SigningError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = crate::model_dir::open_regular(path, crate::model_dir::Links::Refuse)
        .map_err(io_err)?
        .take(MODEL_MAX_BYTES + 1);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io_err)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > MODEL_MAX_BYTES {
            return Err(ModelDirError::TooLarge {
                path: path.to_owned(),
                cap: MODEL_MAX_BYTES,
            }
            .into());
        }
        hasher.update(&buf[..n]);
    }
    Ok(Sha256Digest::from_bytes(hasher.finalize().into()))
}

/// Signs every file of `dir` and writes the bundle to `out` atomically.
pub fn sign_directory(dir: &Path, key: &SigningKey, out: &Path) -> Result<(), SigningError> {
    let files = directory_digests(dir, &DEFAULT_IGNORED)?;
    let name = std::fs::canonicalize(dir)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "model".to_owned());
    let bundle = sign(&name, &files, key);
    let io_err = |source| SigningError::Io {
        path: out.to_owned(),
        source,
    };
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(parent).map_err(io_err)?;
    tmp.write_all(&bundle).map_err(io_err)?;
    tmp.as_file().sync_all().map_err(io_err)?;
    tmp.persist(out).map_err(|e| io_err(e.error))?;
    Ok(())
}
