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

use medguard_attest::{DEFAULT_IGNORED, MANIFEST_PATH, Sha256Digest, SigningKey, sign};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::model_dir::{MODEL_MAX_BYTES, ModelDirError};

/// The signature's file name inside a model directory (the tool's default).
pub const SIGNATURE_FILE: &str = medguard_attest::SIGNATURE_PATH;

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
    /// The manifest of a directory being renewed is not a JSON object.
    #[error("{}: {reason}", path.display())]
    Manifest {
        /// The manifest.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
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

/// How far ahead [`renewal_expiry`] looks.
const RENEWAL_MARGIN: jiff::SignedDuration = jiff::SignedDuration::from_hours(30 * 24);

/// Whether a manifest expiring at `expires` is due for renewal at `now`:
/// it expires within 30 days.
pub fn renewal_due(expires: jiff::Timestamp, now: jiff::Timestamp) -> bool {
    expires <= now + RENEWAL_MARGIN
}

/// The expiry a renewal at `now` gives: the first of January (UTC) after
/// next, counted from 30 days ahead. It is the same for every renewal in a
/// year, so one renewed copy serves them all, and always over a year away.
pub fn renewal_expiry(now: jiff::Timestamp) -> jiff::Timestamp {
    let year = (now + RENEWAL_MARGIN)
        .to_zoned(jiff::tz::TimeZone::UTC)
        .year();
    jiff::civil::date(year + 2, 1, 1)
        .to_zoned(jiff::tz::TimeZone::UTC)
        .map(|z| z.timestamp())
        .unwrap_or(jiff::Timestamp::MAX)
}

/// A copy of the model directory `src` whose manifest says `expires`,
/// signed with `key`: how the demo and the tests keep working after the
/// bundled manifest's own expiry (its key is public, so this proves nothing
/// beyond the demo; the caller checks `src` first). Every file is read once
/// (regular files only, capped), into a staging directory beside the
/// result, where the manifest is edited, everything synced and signed. The
/// copy lands at `parent/<content key>/model/<src's name>`, the key covering
/// the staged files, their names and the signer, so an unchanged source is
/// renewed once and then reused, and only after the copy in place is
/// checked to hold exactly the staged files. `parent/<content key>/` is the
/// caller's to use for what belongs with the copy (the demo's ledger).
/// Returns the copy's directory.
pub fn renewed_copy(
    src: &Path,
    parent: &Path,
    key: &SigningKey,
    expires: jiff::Timestamp,
) -> Result<PathBuf, SigningError> {
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| SigningError::Io { path, source }
    };
    let name = std::fs::canonicalize(src)
        .map_err(io_err(src))?
        .file_name()
        .map(|n| n.to_owned())
        .unwrap_or_else(|| "model".into());
    std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    let tmp = tempfile::Builder::new()
        .prefix(".renewing-")
        .tempdir_in(parent)
        .map_err(io_err(parent))?;
    let staged = tmp.path().join("model").join(&name);
    for (relative, from) in directory_files(src, &DEFAULT_IGNORED)? {
        let mut bytes = crate::model_dir::read_model_file(&from, MODEL_MAX_BYTES)?;
        if relative == MANIFEST_PATH {
            bytes = with_expiry(&bytes, expires).map_err(|reason| SigningError::Manifest {
                path: from.clone(),
                reason,
            })?;
        }
        let to = staged.join(&relative);
        if let Some(dir) = to.parent() {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        let mut file = std::fs::File::create(&to).map_err(io_err(&to))?;
        file.write_all(&bytes)
            .and_then(|()| file.sync_all())
            .map_err(io_err(&to))?;
    }
    let files = directory_digests(&staged, &DEFAULT_IGNORED)?;
    let mut content = Sha256::new();
    content.update(name.as_encoded_bytes());
    for (relative, digest) in &files {
        content.update([0]);
        content.update(relative.as_bytes());
        content.update([0]);
        content.update(digest.as_bytes());
    }
    content.update(key.verifying_key().fingerprint().as_bytes());
    let root = parent.join(hex::encode(&content.finalize()[..12]));
    let copy = root.join("model").join(&name);
    if !root.exists() {
        sign_directory(&staged, key, &staged.join(SIGNATURE_FILE))?;
        match std::fs::rename(tmp.path(), &root) {
            Ok(()) => {
                // The staging directory is the result now: nothing to clean.
                let _ = tmp.keep();
                return Ok(copy);
            }
            // Another process renewed the same content first: check it below.
            Err(_) if root.exists() => {}
            Err(e) => return Err(io_err(&root)(e)),
        }
    }
    // Reuse only a copy that holds exactly what was staged, and is signed.
    if copy.join(SIGNATURE_FILE).is_file() && directory_digests(&copy, &DEFAULT_IGNORED)? == files {
        Ok(copy)
    } else {
        Err(SigningError::Io {
            path: copy,
            source: std::io::Error::other(
                "a renewed copy is there but does not hold the files it is named for; remove it",
            ),
        })
    }
}

/// `manifest` (JSON) with its `expires` set.
fn with_expiry(manifest: &[u8], expires: jiff::Timestamp) -> Result<Vec<u8>, String> {
    let mut value: serde_json::Value =
        serde_json::from_slice(manifest).map_err(|e| e.to_string())?;
    value
        .as_object_mut()
        .ok_or("not a JSON object")?
        .insert("expires".into(), expires.to_string().into());
    let mut text = serde_json::to_vec_pretty(&value).map_err(|e| e.to_string())?;
    text.push(b'\n');
    Ok(text)
}
